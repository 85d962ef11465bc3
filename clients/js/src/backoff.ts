// Reconnect delays: exponential backoff with full jitter (a uniformly random
// delay between 0 and the exponential bound), capped. Full jitter spreads a
// reconnect storm — 10,000 clients dropped by one node at once — evenly
// over the window instead of in synchronised waves.

export interface BackoffOptions {
  /** The bound of the first retry, ms. Default 500. */
  initialMs?: number;
  /** The largest bound, ms. Default 30000. */
  maxMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** Random source in [0, 1). Default Math.random. */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly initial: number;
  private readonly max: number;
  private readonly factor: number;
  private readonly random: () => number;

  constructor(o: BackoffOptions = {}) {
    this.initial = o.initialMs ?? 500;
    this.max = o.maxMs ?? 30_000;
    this.factor = o.factor ?? 2;
    this.random = o.random ?? Math.random;
    if (!(this.initial > 0) || !(this.max >= this.initial) || !(this.factor >= 1)) {
      throw new RangeError('syncgate: backoff needs 0 < initialMs <= maxMs and factor >= 1');
    }
  }

  /** The bound for the current attempt, ms. */
  bound(): number {
    return Math.min(this.max, this.initial * this.factor ** this.attempt);
  }

  /** The delay before the next attempt, ms, and counts the attempt. */
  next(): number {
    const d = this.random() * this.bound();
    this.attempt++;
    return d;
  }

  /** Starts over after a connection that worked. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
