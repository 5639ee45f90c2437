#!/bin/sh
# Install twisted_relay into ./.venv, start a relay on 127.0.0.1:9021, show one
# transfer through it, then keep the relay running until Ctrl-C.
set -eu
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q .
.venv/bin/twistd -n --pidfile= filerelay --port tcp:9021:interface=127.0.0.1 &
relay=$!
trap 'kill $relay 2>/dev/null; wait $relay 2>/dev/null' EXIT INT TERM
sleep 2
out=$(mktemp -d)
echo "== sending README.rst; the sender prints only the code:"
.venv/bin/filerelay-send 127.0.0.1:9021 README.rst > "$out/code" &
sender=$!
while [ ! -s "$out/code" ]; do sleep 0.1; done
cat "$out/code"
echo "== receiving it into $out/"
.venv/bin/filerelay-receive 127.0.0.1:9021 "$(cat "$out/code")" "$out/"
wait $sender
cmp README.rst "$out/README.rst" && echo "== identical. The relay keeps running on 127.0.0.1:9021; Ctrl-C stops it."
wait $relay
