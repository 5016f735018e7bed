"""The worker process of :mod:`.parsepool`: it parses the unit files it is sent.

Started by the pool with the unit prefix as its argument (``python -P -m
kaylee_sync.source.parseworker UNIT_PREFIX`` by hand). Requests arrive on
stdin and answers leave on stdout, each one frame: an 8-byte big-endian length, then a
pickle. A request is a list of ``(path, blob id, contents)``; its answer, the list of
their results from :func:`~kaylee_sync.source.units.parse_file`, the very function the
parent runs in-process. The worker ends at the end of its input: the parent closed the
pipe, or died. The parent trusts nothing it says (see :mod:`.parsepool`).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

from kaylee_sync.source.units import parse_file


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group: stopping is the parent's decision.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    unit_prefix = argv[0] if argv else ""
    # Answers get their own descriptor and fd 1 becomes stderr, so a stray print (a
    # library's warning) can never corrupt the answer stream.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        head = requests.read(8)
        if len(head) < 8:
            return 0
        size = int.from_bytes(head, "big")
        body = requests.read(size)
        if len(body) < size:
            return 1
        files: list[tuple[str, str, bytes]] = pickle.loads(body)  # from our parent
        results = [parse_file(path, blob, data, unit_prefix) for path, blob, data in files]
        payload = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(len(payload).to_bytes(8, "big") + payload)
        answers.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
