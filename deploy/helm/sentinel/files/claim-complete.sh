#!/bin/sh
# `helm test` check: claim a fresh key through the Service, complete it with the returned fencing
# token, then claim again and expect the stored response to be replayed. Needs only a POSIX shell,
# sed, tr and grpcurl; grpcurl learns the API from the server's reflection service.
#   SENTINEL_ADDR            host:port of the release's Service
#   SENTINEL_TEST_NAMESPACE  Sentinel namespace to write to
set -eu

addr=${SENTINEL_ADDR:?SENTINEL_ADDR must be host:port of the Sentinel service}
ns=${SENTINEL_TEST_NAMESPACE:-helm-test}
# A new key per run, so a rerun of `helm test` never meets its own earlier record.
key="helm-test/$(uname -n)/$(date +%s)-$$"
# base64 of "helm-test": protobuf bytes travel as base64 in grpcurl's JSON.
response=aGVsbS10ZXN0

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# rpc METHOD JSON prints the reply on one line without blanks, so sed can pick fields from it.
rpc() {
  out=$(grpcurl -plaintext -connect-timeout 10 -max-time 30 -d "$2" "$addr" "sentinel.v1.SentinelService/$1") ||
    fail "$1 failed: $out"
  printf '%s' "$out" | tr -d ' \t\r\n'
}

claim_request="{\"namespace\":\"$ns\",\"key\":\"$key\",\"holder\":\"helm-test\",\"leaseTtl\":\"60s\"}"

claim=$(rpc Claim "$claim_request")
echo "Claim: $claim"
# uint64 fields are JSON strings in the proto3 JSON mapping.
token=$(printf '%s' "$claim" | sed -n 's/.*"acquired":{[^}]*"token":"\([0-9][0-9]*\)".*/\1/p')
[ -n "$token" ] || fail "the first claim of a new key did not return acquired with a token"

complete=$(rpc Complete "{\"namespace\":\"$ns\",\"key\":\"$key\",\"token\":\"$token\",\"success\":{\"response\":\"$response\"}}")
echo "Complete: $complete"
case $complete in
  *'"state":"EXECUTION_STATE_COMPLETED"'*) ;;
  *) fail "Complete did not report EXECUTION_STATE_COMPLETED" ;;
esac

replay=$(rpc Claim "$claim_request")
echo "Claim again: $replay"
case $replay in
  *'"completed":{'*) ;;
  *) fail "a claim after Complete did not replay the completion" ;;
esac
case $replay in
  *"\"response\":\"$response\""*) ;;
  *) fail "the replayed response differs from the stored one" ;;
esac
case $replay in
  *"\"token\":\"$token\""*) ;;
  *) fail "the replayed completion does not carry token $token" ;;
esac

echo "PASS: claimed $ns/$key (token $token), completed it, and the completion replays"
