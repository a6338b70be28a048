/** The codecs on their own: no server involved. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { CodecError, jsonCodec, rawCodec } from "../src/index.js";

test("json codec round-trips plain JSON values exactly", () => {
  const codec = jsonCodec();
  const value = { b: [1, "two", { three: null }], a: true, "10": "numeric key", emoji: "\u{1F600}", nested: { x: 1.5 } };
  const bytes = codec.encode(value);
  assert.deepEqual(codec.decode(bytes), value);
  assert.deepEqual(codec.encode(codec.decode(bytes)), bytes);
});

test("json codec refuses values JSON would change", () => {
  const codec = jsonCodec<unknown>();
  class Point {
    constructor(readonly x: number) {}
  }
  const cyclic: Record<string, unknown> = {};
  cyclic["self"] = cyclic;
  const refused: Array<[string, unknown]> = [
    ["undefined", undefined],
    ["bigint", 1n],
    ["nested bigint", { amount: 10n }],
    ["undefined property", { a: undefined }],
    ["NaN", Number.NaN],
    ["Infinity", [Number.POSITIVE_INFINITY]],
    ["-0", -0],
    ["Date", new Date(0)],
    ["Map", new Map([["a", 1]])],
    ["Set", new Set([1])],
    ["class instance", new Point(1)],
    ["typed array", new Uint8Array([1])],
    ["function", () => 1],
    ["sparse array", [1, , 3]],
    ["symbol key", { [Symbol("s")]: 1 }],
    ["cycle", cyclic],
  ];
  for (const [name, value] of refused) {
    assert.throws(() => codec.encode(value), CodecError, `${name} should be refused`);
  }
});

test("json codec accepts shared (non-cyclic) references", () => {
  const shared = { n: 1 };
  assert.deepEqual(jsonCodec().decode(jsonCodec().encode({ a: shared, b: shared })), { a: { n: 1 }, b: { n: 1 } });
});

test("raw codec keeps bytes and refuses anything else", () => {
  const bytes = new Uint8Array([0, 255, 10]);
  assert.deepEqual(rawCodec.decode(rawCodec.encode(bytes)), bytes);
  assert.throws(() => rawCodec.encode("text" as unknown as Uint8Array), CodecError);
});
