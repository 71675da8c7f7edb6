// A value that changes over time and tells listeners, in the shape React's
// useSyncExternalStore wants (subscribe + getSnapshot), usable without React too.

export type Listener = () => void;

export class Store<T> {
  private value: T;
  private readonly listeners = new Set<Listener>();

  constructor(initial: T) {
    this.value = initial;
  }

  /** The current value. The same object until the next `set`, so it can be compared by identity. */
  get = (): T => this.value;

  /** Calls `listener` after every change until the returned function is called. */
  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  set(next: T): void {
    if (Object.is(next, this.value)) return;
    this.value = next;
    for (const listener of [...this.listeners]) listener();
  }

  update(change: (current: T) => T): void {
    this.set(change(this.value));
  }
}
