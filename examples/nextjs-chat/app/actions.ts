'use server';

import { randomUUID } from 'node:crypto';

import { cookies } from 'next/headers';
import { redirect } from 'next/navigation';

import { currentUser } from '@/lib/identity';
import { NAME_MAX, ROOM_RE, TEXT_MAX, settings } from '@/lib/settings';

/** Sets the visitor's name (and a fresh id the first time), then opens the room. */
export async function chooseName(formData: FormData): Promise<void> {
  const name = String(formData.get('name') ?? '').trim().slice(0, NAME_MAX);
  const room = String(formData.get('room') ?? 'lobby');
  if (!name) return;
  const jar = await cookies();
  if (!jar.get('chat_user')) jar.set('chat_user', `u-${randomUUID().slice(0, 8)}`, { httpOnly: true, sameSite: 'lax', path: '/' });
  jar.set('chat_name', name, { httpOnly: true, sameSite: 'lax', path: '/' });
  const transport = String(formData.get('transport') ?? '');
  const query = /^[a-z_]{1,16}$/.test(transport) ? `?transport=${transport}` : '';
  redirect(`/rooms/${ROOM_RE.test(room) ? room : 'lobby'}${query}`);
}

export type SendResult = { ok: true; offset: number } | { ok: false; error: string };

/**
 * Publishes a chat message through the Tidings server API, with the API key that only
 * this server knows. Subscribers of `chat:<room>` get it, and it is kept in history.
 */
export async function sendMessage(room: string, text: string): Promise<SendResult> {
  const user = await currentUser();
  if (!user) return { ok: false, error: 'choose a name first' };
  if (!ROOM_RE.test(room)) return { ok: false, error: 'no such room' };
  const body = text.trim().slice(0, TEXT_MAX);
  if (!body) return { ok: false, error: 'empty message' };
  try {
    const res = await fetch(`${settings.apiUrl}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': settings.apiKey },
      body: JSON.stringify({
        channel: `chat:${room}`,
        data: { id: randomUUID(), text: body, user: user.id, name: user.name, at: Date.now() },
      }),
      cache: 'no-store',
      signal: AbortSignal.timeout(5000),
    });
    const reply = (await res.json()) as { result?: { offset?: number }; error?: { message?: string } };
    if (!res.ok || reply.error) return { ok: false, error: reply.error?.message || `HTTP ${res.status}` };
    return { ok: true, offset: reply.result?.offset ?? 0 };
  } catch (err) {
    return { ok: false, error: `Tidings unreachable: ${err instanceof Error ? err.message : String(err)}` };
  }
}
