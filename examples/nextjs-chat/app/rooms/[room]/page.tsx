import { notFound } from 'next/navigation';

import { currentUser } from '@/lib/identity';
import { ROOMS, ROOM_RE, settings } from '@/lib/settings';

import { Chat } from '../../Chat';
import { NameForm } from '../../NameForm';

export const dynamic = 'force-dynamic';

const TRANSPORTS = ['websocket', 'http_stream', 'sse', 'long_poll'] as const;
type Transport = (typeof TRANSPORTS)[number];

export default async function RoomPage({
  params,
  searchParams,
}: {
  params: Promise<{ room: string }>;
  searchParams: Promise<{ transport?: string }>;
}) {
  const { room } = await params;
  if (!ROOM_RE.test(room)) notFound();
  // ?transport=sse (or http_stream, long_poll, websocket) forces one transport; by
  // default the client tries them all in that order.
  const { transport } = await searchParams;
  const user = await currentUser();
  if (!user) return <NameForm room={room} transport={transport} />;
  const forced = TRANSPORTS.find((t) => t === transport);
  const transports: Transport[] = forced ? [forced] : [...TRANSPORTS];
  const rooms = ROOMS.includes(room) ? ROOMS : [...ROOMS, room];
  return (
    <Chat
      url={settings.publicUrl}
      room={room}
      rooms={rooms}
      me={user}
      transports={transports}
      auth={settings.auth}
    />
  );
}
