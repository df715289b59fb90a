"""The Kafka peer of bench/events/run: a plain confluent-kafka client (librdkafka 2.16,
bundled with the wheel) as producer and as the floor consumer, against tansu.

Debian's kcat cannot be the peer: it links Debian bookworm's librdkafka 2.0.2, whose
tagged-field skipping is off by one byte (fixed in librdkafka 2.2.0, PR #4278), and tansu
0.6.0 answers ApiVersions v3 with four tagged fields, so kcat's first request fails with
"ApiVersionRequest failed: Local: Read underflow" (bench/README.md, section 9).

  kafka.py produce ADDR TOPIC               key<TAB>value lines from stdin
  kafka.py paced ADDR TOPIC RATE SECS NAME  RATE/s for SECS s of candidate.merged NAME-i,
                                            each stamped with its production time
  kafka.py floor ADDR TOPIC N               read N records from the start of every
                                            partition (assigned, no group); prints N

One record per batch (batch.num.messages=1): tansu 0.6.0 serves a fetch only from batches
that start at or after the fetch offset (README, Events: Broker in tests).
"""

import datetime
import json
import sys
import time

import confluent_kafka as ck


def producer(addr):
    return ck.Producer({"bootstrap.servers": addr, "batch.num.messages": 1, "linger.ms": 0})


def delivered(err, _msg):
    if err is not None:
        sys.exit(f"kafka.py: delivery failed: {err}")


def finish(p):
    left = p.flush(60)
    if left:
        sys.exit(f"kafka.py: {left} records not delivered after 60 s")


def produce(addr, topic):
    p = producer(addr)
    for line in sys.stdin:
        key, value = line.rstrip("\n").split("\t", 1)
        while True:
            try:
                p.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    finish(p)


def paced(addr, topic, rate, secs, name):
    p = producer(addr)
    start = time.monotonic()
    for i in range(rate * secs):
        due = start + i / rate
        while time.monotonic() < due:
            p.poll(max(0.0, due - time.monotonic()))
        t = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        event = {"id": f"{name}-{i}", "type": "candidate.merged", "time": t, "data": {"id": f"{name}-{i}"}}
        p.produce(topic, key=f"{name}-{i % 100}", value=json.dumps(event), on_delivery=delivered)
        p.poll(0)
    finish(p)


def floor(addr, topic, n):
    c = ck.Consumer({"bootstrap.servers": addr, "group.id": "bench-floor", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
    got, deadline = 0, time.monotonic() + 60
    while got < n:
        if time.monotonic() > deadline:
            sys.exit(f"kafka.py: read {got} of {n} records in 60 s")
        for m in c.consume(num_messages=min(1000, n - got), timeout=1.0):
            if m.error():
                sys.exit(f"kafka.py: {m.error()}")
            got += 1
    c.close()
    print(got)


def main():
    cmd, addr, topic = sys.argv[1:4]
    if cmd == "produce":
        produce(addr, topic)
    elif cmd == "paced":
        paced(addr, topic, int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif cmd == "floor":
        floor(addr, topic, int(sys.argv[4]))
    else:
        sys.exit(f"kafka.py: unknown command {cmd} (produce, paced, floor)")


if __name__ == "__main__":
    main()
