"""A minimal NFQUEUE client over a raw netlink socket: bind a queue, read packets, send verdicts (batched)."""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_GSO = 4
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_TIMESTAMP = 4
NFQA_PAYLOAD = 10
NF_DROP = 0
NF_ACCEPT = 1
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_VERDICT_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
_VERDICT = struct.Struct("=IHHII" + "BBH" + "HH" + "II")  # nlmsghdr, nfgenmsg, nlattr, verdict hdr
_TIMESTAMP = struct.Struct("!QQ")  # struct nfqnl_msg_packet_timestamp: seconds, microseconds (CLOCK_REALTIME)


def _attr(kind: int, value: bytes) -> bytes:
    raw = _NLATTR.pack(4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


class NfQueue:
    """One bound NFQUEUE number; `read()` yields (packet_id, payload head, kernel stamp) and `send()` releases them.

    The kernel stamps a queued packet (NFQA_TIMESTAMP, CLOCK_REALTIME, microseconds) only on the PREROUTING,
    INPUT and FORWARD hooks, and only while some socket asks for receive timestamps; on OUTPUT there is none.
    """

    def __init__(self, queue_num: int, copy_bytes: int = 40, maxlen: int = 65536, rcvbuf: int = 16 << 20) -> None:
        self.queue_num = queue_num
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE: root may exceed rmem_max
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # an overrun is counted by the kernel (/proc/net/netfilter/nfnetlink_queue); no error on our reads
            self._sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            # no stamp comes back on this socket: asking for one turns on the kernel's packet stamping
            # (netstamp_needed), without which queued packets carry no NFQA_TIMESTAMP
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)))
            self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_bytes, NFQNL_COPY_PACKET)))
            self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
            # GSO packets are passed whole: we only read the IP header, so no software segmentation is needed
            self._config(
                _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
            )
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._buf = bytearray(65536)

    def fileno(self) -> int:
        return self._sock.fileno()

    def _config(self, attrs: bytes) -> None:
        """Send one config message and wait for its ACK (raises OSError on a netlink error)."""
        self._seq += 1
        body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", self.queue_num) + attrs
        msg = _NLMSGHDR.pack(16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                             NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body
        self._sock.send(msg)
        while True:
            data = self._sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if kind == NLMSG_ERROR and seq == self._seq:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return
                off += (length + 3) & ~3

    def read(self, limit: int = 64) -> list[tuple[int, bytes, int]]:
        """Read up to `limit` queued packets without blocking: (packet id, first bytes of the IP packet, stamp).

        The stamp is the kernel's CLOCK_REALTIME in nanoseconds (microsecond resolution), 0 when absent.
        """
        out: list[tuple[int, bytes, int]] = []
        buf = self._buf
        for _ in range(limit):
            try:
                n = self._sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                raise
            off = 0
            while off + 16 <= n:
                length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
                if length < 16:
                    break
                if kind == _PACKET_TYPE:
                    pkt_id = -1
                    stamp = 0
                    payload = b""
                    a = off + 20
                    end = off + length
                    while a + 4 <= end:
                        alen, atype = _NLATTR.unpack_from(buf, a)
                        if alen < 4:
                            break
                        atype &= 0x3FFF
                        if atype == NFQA_PACKET_HDR:
                            (pkt_id,) = struct.unpack_from("!I", buf, a + 4)
                        elif atype == NFQA_PAYLOAD:
                            payload = bytes(buf[a + 4 : a + alen])
                        elif atype == NFQA_TIMESTAMP and alen >= 4 + _TIMESTAMP.size:
                            sec, usec = _TIMESTAMP.unpack_from(buf, a + 4)
                            stamp = sec * 1_000_000_000 + usec * 1000
                        a += (alen + 3) & ~3
                    if pkt_id >= 0:
                        out.append((pkt_id, payload, stamp))
                off += (length + 3) & ~3
        return out

    def verdict_bytes(self, pkt_id: int, verdict: int) -> bytes:
        """One verdict message; several may be concatenated and sent at once."""
        return _VERDICT.pack(32, _VERDICT_TYPE, NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0,
                             socket.htons(self.queue_num), 12, NFQA_VERDICT_HDR,
                             socket.htonl(verdict), socket.htonl(pkt_id))

    def send(self, messages: bytes) -> None:
        """Send concatenated verdict messages in one system call."""
        self._sock.send(messages)

    def close(self) -> None:
        self._sock.close()


def queue_counters(queue_num: int) -> dict[str, int]:
    """The kernel's counters for one queue: packets waiting, dropped for a full queue, dropped for a full socket."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 8 and int(cols[0]) == queue_num:
                    return {"waiting": int(cols[2]), "queue_dropped": int(cols[5]), "user_dropped": int(cols[6])}
    except OSError:
        pass
    return {}
