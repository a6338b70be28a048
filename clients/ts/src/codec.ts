/**
 * Codecs turn the value returned by `fn` into the exact bytes the server stores and replays,
 * and back. A codec must be lossless: a replayed caller has to see the same value as the caller
 * that ran the work, so the JSON codec refuses anything JSON would silently change.
 */

/** Encodes results to stored bytes and decodes replayed bytes. */
export interface Codec<T> {
  /** Throws when the value cannot be stored losslessly. */
  encode(value: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

/** Thrown by a codec; `once` reports it as FAILURE{POSSIBLE} because the work already ran. */
export class CodecError extends Error {
  override name = "CodecError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** JSON-compatible values that survive JSON.stringify/JSON.parse unchanged. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * A UTF-8 JSON codec that refuses values JSON would not round-trip: undefined, bigint, NaN,
 * Infinity, -0, Date, Map, Set, class instances, typed arrays, functions, symbols, sparse
 * arrays and cycles. Refusing is the point: "JSON turned my tuple into a list" is a silent
 * replay bug, an error is not.
 */
export function jsonCodec<T = JsonValue>(): Codec<T> {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder("utf-8", { fatal: true });
  return {
    encode(value: T): Uint8Array {
      assertJsonRoundTrips(value, "$", new Set());
      return encoder.encode(JSON.stringify(value));
    },
    decode(bytes: Uint8Array): T {
      try {
        return JSON.parse(decoder.decode(bytes)) as T;
      } catch (err) {
        throw new CodecError("stored response is not UTF-8 JSON", { cause: err });
      }
    },
  };
}

/** Stores bytes as they are; decode returns a copy so callers cannot alter a shared buffer. */
export const rawCodec: Codec<Uint8Array> = {
  encode(value: Uint8Array): Uint8Array {
    if (!(value instanceof Uint8Array)) {
      throw new CodecError(`raw codec needs a Uint8Array, got ${describe(value)}`);
    }
    return value;
  },
  decode(bytes: Uint8Array): Uint8Array {
    return new Uint8Array(bytes);
  },
};

function assertJsonRoundTrips(value: unknown, path: string, ancestors: Set<object>): void {
  switch (typeof value) {
    case "string":
    case "boolean":
      return;
    case "number":
      if (!Number.isFinite(value)) {
        throw new CodecError(`${path} is ${value}, which JSON stores as null`);
      }
      if (Object.is(value, -0)) {
        throw new CodecError(`${path} is -0, which JSON stores as 0`);
      }
      return;
    case "object":
      break;
    default:
      throw new CodecError(`${path} is ${describe(value)}, which JSON cannot store`);
  }
  if (value === null) return;
  if (ancestors.has(value)) {
    throw new CodecError(`${path} is a cycle`);
  }
  ancestors.add(value);
  if (Array.isArray(value)) {
    // Extra properties and holes would be dropped or turned into null.
    if (Object.getPrototypeOf(value) !== Array.prototype || Reflect.ownKeys(value).length !== value.length + 1) {
      throw new CodecError(`${path} is an array with holes or extra properties, which JSON would change`);
    }
    value.forEach((item, i) => assertJsonRoundTrips(item, `${path}[${i}]`, ancestors));
  } else {
    const proto: unknown = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      throw new CodecError(`${path} is ${describe(value)}; only plain objects round-trip through JSON`);
    }
    for (const key of Reflect.ownKeys(value)) {
      const desc = Object.getOwnPropertyDescriptor(value, key);
      if (typeof key === "symbol" || desc === undefined || !desc.enumerable) {
        throw new CodecError(`${path} has a symbol or non-enumerable property, which JSON drops`);
      }
      if (!("value" in desc)) {
        throw new CodecError(`${path}.${key} is an accessor, which JSON would turn into data`);
      }
      assertJsonRoundTrips(desc.value, `${path}.${key}`, ancestors);
    }
  }
  ancestors.delete(value);
}

function describe(value: unknown): string {
  if (value === undefined) return "undefined";
  if (typeof value === "bigint") return "a bigint";
  if (typeof value === "function") return "a function";
  if (typeof value === "symbol") return "a symbol";
  if (typeof value === "object" && value !== null) {
    const ctor = (value as { constructor?: { name?: string } }).constructor;
    return `a ${ctor?.name ?? "object"}`;
  }
  return typeof value;
}
