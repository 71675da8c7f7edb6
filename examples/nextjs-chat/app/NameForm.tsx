import { chooseName } from './actions';

export function NameForm({ room, transport }: { room: string; transport?: string | undefined }) {
  return (
    <form action={chooseName} className="name-form" data-testid="name-form">
      <h1>Tidings chat</h1>
      <p>Pick a name to join #{room}.</p>
      <input type="hidden" name="room" value={room} />
      {transport && <input type="hidden" name="transport" value={transport} />}
      <input name="name" placeholder="Your name" maxLength={32} required autoFocus data-testid="name-input" />
      <button type="submit" data-testid="name-save">
        Join
      </button>
    </form>
  );
}
