#!/usr/bin/env python3
"""Breaks a durable ack down from a trace-ack.sh trace (one producer, one shard).

Per record (matched by byte counts on the producer's and the shard's sockets):
  net in   client sendto -> the shard's recvfrom that returns the record
  broker   that recvfrom -> the shard's sendto that carries the record's ack
  net out  that sendto -> the client's recvfrom that returns the ack
Per operation of the shard's io_uring (matched by request), all of them (background
zeroing and checkpoint writes too): submission -> completion; for an fsync the steps
inside it (to the device's flush, the flush, back to the CQE); for a block write request
its time on the device; and the metadata writes (an inode block, say) beside them.

Then the broker's time of each record, split by what it waited for, averaged over bands
of records sorted by that time (the slowest 1 % last). Matched by time, not by bytes: its
write is the first the shard submitted after the record arrived, its sync the first
submitted after that write's CQE. With one record in flight at a time, as at the latency
case's rate, that is the write and the sync that made it durable.
"""
import bisect
import collections
import re
import sys

LINE = re.compile(r'^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+)[:( ] ?(.*)$')
Event = collections.namedtuple('Event', 'us comm tid name rest')


def quantiles(values):
    v = sorted(values)
    if not v:
        return 'none'
    at = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    return f'p50 {at(0.5):6.0f}  p90 {at(0.9):6.0f}  p99 {at(0.99):6.0f}  (n={len(v)})'


def covered_at(events, unit):
    """The time each whole `unit` of a byte stream had passed: [(us, bytes)] -> [us]."""
    out, total = [], 0
    for us, n in events:
        total += n
        while len(out) < total // unit:
            out.append(us)
    return out


def main(path):
    events = []
    for line in open(path):
        m = LINE.match(line)
        if m:
            events.append(Event(float(m.group(4)) * 1e6, m.group(1), int(m.group(2)), m.group(5), m.group(6)))
    shard = next(e.tid for e in events if e.comm.startswith('shard-'))
    length = lambda e: int(re.search(r'len: (0x[0-9a-f]+)', e.rest).group(1), 16)
    returned = lambda e: int(e.rest.split('-> ')[1], 16)
    client_sends = [e for e in events if e.name == 'sys_sendto' and e.tid != shard]
    record = collections.Counter(length(e) for e in client_sends).most_common(1)[0][0]
    sender = next(e.tid for e in client_sends if length(e) == record)
    sent = [e.us for e in client_sends if e.tid == sender and length(e) == record]
    start = sent[0]
    after = [e for e in events if e.us >= start]
    shard_sends = [e for e in after if e.tid == shard and e.name == 'sys_sendto']
    ack = min(length(e) for e in shard_sends)
    received = covered_at([(e.us, returned(e)) for e in after if e.tid == shard and e.name == 'sys_recvfrom' and '-> 0x' in e.rest], record)
    acked = covered_at([(e.us, length(e)) for e in shard_sends], ack)
    reader = [(e.us, returned(e)) for e in after if e.tid not in (shard, sender) and e.name == 'sys_recvfrom' and '-> 0x' in e.rest]
    answered = covered_at(reader, ack)
    n = min(len(sent), len(received), len(acked), len(answered))
    print(f'{n} records of {record} bytes, acks of {ack} bytes')
    print(f'  end to end     {quantiles([answered[i] - sent[i] for i in range(n)])}')
    print(f'  net in         {quantiles([received[i] - sent[i] for i in range(n)])}')
    print(f'  broker         {quantiles([acked[i] - received[i] for i in range(n)])}')
    print(f'  net out        {quantiles([answered[i] - acked[i] for i in range(n)])}')

    # The shard's disk operations, and the block requests they caused.
    submitted, ops = {}, {'write': [], 'fsync': []}
    device_writes, flushes = {}, []
    for e in events:
        if e.name == 'io_uring_submit_req':
            op = re.search(r'opcode (\w+)', e.rest).group(1)
            kind = 'write' if op.startswith('WRITE') else 'fsync' if op == 'FSYNC' else None
            if kind:
                submitted[re.search(r'req (\w+)', e.rest).group(1)] = (kind, e.us)
        elif e.name == 'io_uring_complete':
            req = re.search(r'req (\w+)', e.rest).group(1)
            if req in submitted:
                kind, us = submitted.pop(req)
                # A write that is not of whole sectors is not the log's: an eventfd's 8
                # bytes, say (stock glommio's preemption timer wrote one).
                result = int(re.search(r'result (-?\d+)', e.rest).group(1))
                if kind == 'fsync' or result % 512 == 0:
                    ops[kind].append((us, e.us))
        elif e.name == 'block_rq_issue' and ' FF ' in e.rest:
            flushes.append([e.us, None])
        elif e.name == 'block_rq_complete' and ' FF ' in e.rest and flushes and flushes[-1][1] is None:
            flushes[-1][1] = e.us
        elif e.name in ('block_rq_issue', 'block_rq_complete') and re.match(r'\d+,\d+ W', e.rest):
            sector = e.rest.split('() ')[1].split(' +')[0]
            if sector != '0':
                device_writes.setdefault(sector, []).append(e.us)
    for kind, spans in ops.items():
        print(f'  {kind}: submit -> CQE{" " * (23 - len(kind))}{quantiles([b - a for a, b in spans])}')
    metadata = [e for e in events if e.name == 'block_rq_issue' and re.match(r'\d+,\d+ W\w*M', e.rest)]
    seconds = (events[-1].us - events[0].us) / 1e6
    print(f'  metadata writes (e.g. an inode block): {len(metadata)}, {len(metadata) / seconds:.0f}/s')
    flushes = [f for f in flushes if f[1] is not None]
    issue = [f[0] for f in flushes]
    to_device, back = [], []
    for a, b in ops['fsync']:
        i = bisect.bisect_left(issue, a)
        if i < len(issue) and flushes[i][1] <= b:
            to_device.append(issue[i] - a)
            back.append(b - flushes[i][1])
    print(f'  fsync: submit -> flush at the device  {quantiles(to_device)}')
    print(f'  fsync: flush on the device            {quantiles([b - a for a, b in flushes])}')
    print(f'  fsync: flush done -> CQE              {quantiles(back)}')
    # A block is written again and again while the tail fills it: issue and completion
    # alternate per sector.
    on_device = [t[k + 1] - t[k] for t in device_writes.values() for k in range(0, len(t) - 1, 2)]
    print(f'  write: on the device                  {quantiles(on_device)}')
    per_record(received[:n], acked[:n], sorted(ops['write']), sorted(ops['fsync']))


def per_record(received, acked, writes, syncs):
    """Each record's broker time split into: until its write was submitted, the write, until
    its sync was submitted (with the share of records whose write completed while an
    earlier sync still ran), the sync, and from the sync's CQE to the ack's send."""
    write_at, sync_at = [w[0] for w in writes], [s[0] for s in syncs]
    rows = []
    for r, a in zip(received, acked):
        i = bisect.bisect_left(write_at, r)
        if i == len(writes) or writes[i][0] > a:
            continue
        w0, w1 = writes[i]
        j = bisect.bisect_left(sync_at, w1)
        if j == len(syncs) or syncs[j][0] > a:
            continue
        s0, s1 = syncs[j]
        busy = any(x0 < w1 < x1 for x0, x1 in syncs[max(0, j - 3):j])
        rows.append((a - r, w0 - r, w1 - w0, s0 - w1, busy, s1 - s0, a - s1))
    if not rows:
        return
    rows.sort()
    print(f'  broker time by step, mean us over records ordered by it ({len(rows)} matched):')
    print('    records         broker  to write  write  to sync (sync running)  sync  to ack')
    bands = [('fastest 50 %', 0, 0.5), ('50-90 %', 0.5, 0.9), ('90-99 %', 0.9, 0.99), ('slowest 1 %', 0.99, 1)]
    for name, lo, hi in bands:
        band = rows[int(lo * len(rows)):int(hi * len(rows))]
        if not band:
            continue
        mean = [sum(col) / len(band) for col in zip(*band)]
        print(f'    {name:14} {mean[0]:7.0f} {mean[1]:9.0f} {mean[2]:6.0f} {mean[3]:8.0f} ({100 * mean[4]:3.0f} %)'
              f'         {mean[5]:5.0f} {mean[6]:6.0f}')


if __name__ == '__main__':
    main(sys.argv[1])
