#!/usr/bin/env python3
"""bench/attack.py: issue 10's attacks against one running falgate, with its memory per attack.

    attack.py PORT PID TOKEN            prints one TSV row per attack:
                                        name, answers, peak RSS kB, RSS before kB, RSS 5 s after kB

Before each attack the process's peak (VmHWM) is reset to its current RSS (/proc/PID/clear_refs,
"5"), so each row's peak is that attack's own. The same attacks, with assertions, are the Rust
battery in tests/it/attack/; this script only measures them on a release build.
"""

import collections
import http.client
import socket
import sys
import threading
import time

PORT, PID, TOKEN = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
SUBMIT = "/api/fal/queue/fal-ai/video-prompt-generator"
SETTLE_S = 5


def status_kb(key):
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak():
    try:
        with open(f"/proc/{PID}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def post(body, headers=None):
    """One POST to the submit route: 'status code' (x-falgate-error), answer bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    try:
        conn.request("POST", SUBMIT, body=body, headers={
            "authorization": f"Bearer {TOKEN}", "content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        answer = response.read()
        return f"{response.status} {response.getheader('x-falgate-error') or '-'}", len(answer)
    except OSError as err:
        return f"error {type(err).__name__}", 0
    finally:
        conn.close()


def key_flood():
    parts = [b'{"input_concept":"a lighthouse"']
    parts += [b',"k%06d":0' % i for i in range(800_000)]
    parts.append(b"}")
    return b"".join(parts)


def summary(results):
    """'413 json_too_large x8, 171 B' from (answer, size) pairs."""
    counts = collections.Counter(answer for answer, _ in results)
    largest = max((size for _, size in results), default=0)
    return ", ".join(f"{a} x{n}" if n > 1 else a for a, n in counts.items()) + f", {largest} B"


def concurrently(n, fn):
    results = [None] * n

    def run(i):
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def held_sockets(n, first_bytes, hold_s):
    """Opens n connections, sends first_bytes on each (never finishing the request), holds them
    for hold_s, then reports how many the gate answered or closed meanwhile."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", PORT))
        s.settimeout(0.0)
        socks.append(s)
    refused = 0
    for s in socks:
        if first_bytes:
            s.settimeout(5)
            try:
                s.sendall(first_bytes)
            except OSError:
                refused += 1
    time.sleep(hold_s)
    for s in socks:
        s.settimeout(0.05)
        try:
            data = s.recv(64)
            if data == b"" or data.startswith(b"HTTP/1.1 4"):
                refused += 1
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            refused += 1
        s.close()
    return f"{n} held, {refused} answered 4xx or closed within {hold_s} s"


def attacks():
    flood = key_flood()
    yield "key flood (9.6 MB, 800,000 keys)", lambda: summary([post(flood)])
    yield "key flood x8 concurrent", lambda: summary(concurrently(8, lambda: post(flood)))
    wide = b'{"input_concept":"x","a":[0' + b",0" * 200_000 + b"]}"
    yield "wide array (200,001 values)", lambda: summary([post(wide)])
    deep = b'{"input_concept":' + b"[" * 1_000_000
    yield "deep JSON (1,000,000 brackets)", lambda: summary([post(deep)])
    yield "16 KB header", lambda: summary([post(b'{"input_concept":"x"}', {"x-big": "a" * 16384})])
    endless = b"GET /healthz HTTP/1.1\r\nhost: falgate\r\nx-endless: " + b"a" * (390 * 1024)
    yield "endless header line x100 (390 KB each)", lambda: held_sockets(100, endless, 2)
    yield "silent connections x1000", lambda: held_sockets(1000, b"", 2)


def main():
    resettable = reset_peak()
    for name, attack in attacks():
        reset_peak()
        before = status_kb("VmRSS")
        answers = attack()
        peak = status_kb("VmHWM")
        time.sleep(SETTLE_S)
        after = status_kb("VmRSS")
        if not resettable:
            name += " (peak since start: clear_refs not writable)"
        print(f"{name}\t{answers}\t{peak}\t{before}\t{after}", flush=True)


if __name__ == "__main__":
    main()
