// Mints the connection token for the signed-in visitor: an HS256 JWT signed here, on the
// server, with the secret Tidings shares. The browser only ever sees the token.

import { SignJWT } from 'jose';

import { currentUser } from '@/lib/identity';
import { settings } from '@/lib/settings';

export const dynamic = 'force-dynamic';

export async function GET(): Promise<Response> {
  const user = await currentUser();
  if (!user) return Response.json({ error: 'choose a name first' }, { status: 401 });
  const token = await new SignJWT({ info: { name: user.name } })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(user.id)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + settings.tokenTtl)
    .sign(new TextEncoder().encode(settings.tokenSecret));
  return Response.json({ token }, { headers: { 'Cache-Control': 'no-store' } });
}
