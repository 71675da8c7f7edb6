import { chooseName } from './actions';

export function NameForm({ room }: { room: string }) {
  return (
    <form action={chooseName} className="name-form" data-testid="name-form">
      <h1>Tidings chat</h1>
      <p>Pick a name to join #{room}.</p>
      <input type="hidden" name="room" value={room} />
      <input name="name" placeholder="Your name" maxLength={32} required autoFocus data-testid="name-input" />
      <button type="submit" data-testid="name-save">
        Join
      </button>
    </form>
  );
}
