// store/ may not import src/, so it takes the small slice of a pino logger it needs.
export interface StoreLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export const nullLogger: StoreLogger = { info: () => undefined, warn: () => undefined };
