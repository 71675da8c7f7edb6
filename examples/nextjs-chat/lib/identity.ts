// Who the visitor is: a name they chose and a random id, kept in two cookies. A real app
// would use its own sessions here; the token route and the server action only need
// `currentUser()`.

import { cookies } from 'next/headers';

export interface User {
  id: string;
  name: string;
}

export async function currentUser(): Promise<User | null> {
  const jar = await cookies();
  const id = jar.get('chat_user')?.value;
  const name = jar.get('chat_name')?.value;
  if (!id || !name) return null;
  return { id, name };
}
