import Link from 'next/link';

import { currentUser } from '@/lib/identity';
import { ROOMS } from '@/lib/settings';

import { NameForm } from './NameForm';

export const dynamic = 'force-dynamic';

export default async function Home() {
  const user = await currentUser();
  if (!user) return <NameForm room="lobby" />;
  return (
    <main className="home">
      <h1>Hello, {user.name}</h1>
      <ul>
        {ROOMS.map((room) => (
          <li key={room}>
            <Link href={`/rooms/${room}`}>#{room}</Link>
          </li>
        ))}
      </ul>
    </main>
  );
}
