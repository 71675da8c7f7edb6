// Tidings' connect proxy, for the variant without tokens (tidings.proxy.toml,
// TIDINGS_AUTH=proxy): Tidings forwards the browser's Cookie header here when a client
// connects, and this route answers who the visitor is, in Centrifugo's proxy format
// (docs/proxy.md). The shared header proves the call comes from Tidings.

import { currentUser } from '@/lib/identity';
import { settings } from '@/lib/settings';

export const dynamic = 'force-dynamic';

export async function POST(request: Request): Promise<Response> {
  if (request.headers.get('x-tidings-proxy-secret') !== settings.proxySecret) {
    return new Response('forbidden', { status: 403 });
  }
  const user = await currentUser();
  if (!user) {
    // 4501: the client does not reconnect; the page shows the name form instead.
    return Response.json({ disconnect: { code: 4501, reason: 'choose a name first' } });
  }
  return Response.json({ result: { user: user.id, info: { name: user.name } } });
}
