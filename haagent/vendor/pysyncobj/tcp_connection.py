import time
import socket
from sys import platform
import zlib
import struct

from . import pickle
from . import win_inet_pton  # noqa: F401

from .poller import POLL_EVENT_TYPE
from .monotonic import monotonic as monotonicTime


# haagent: level 3 as upstream, but a 4 KiB window and small hash tables (zlib's defaults are
# 32 KiB and memLevel 8): setting up the default state took ~65 us per message, most of a small
# message's send cost, for the same ratio on Raft's messages. Any zlib reader inflates it.
FRAME_COMPRESSION = (3, zlib.DEFLATED, 12, 4)


def compressFrame(data):
    compressor = zlib.compressobj(*FRAME_COMPRESSION)
    return compressor.compress(data) + compressor.flush()


class CONNECTION_STATE:
    DISCONNECTED = 0
    CONNECTING = 1
    CONNECTED = 2


# haagent: limits on what a peer can make this process read (see PATCHES.md).
#: Frames of a connection whose peer has not authenticated yet: the key exchange and the node
#: address are ~160-260 bytes each once encrypted.
DEFAULT_HANDSHAKE_FRAME_SIZE = 2 ** 12
#: Frames of an authenticated peer (haagent sets its own, derived limit).
DEFAULT_MAX_FRAME_SIZE = 2 ** 24
#: Bytes read from one connection per poll event, so that one busy peer cannot hold the
#: Raft loop: the rest stays in the socket and is read on the next tick.
DEFAULT_READ_BUDGET = 2 ** 18

_FRAME_HEADER = struct.Struct('i')


class FrameError(Exception):
    """The byte stream cannot be a frame this side accepts: close the connection."""


class FrameReader(object):
    """Length-prefixed frames (4-byte native signed length, then the frame) from a byte stream.

    Incremental: received bytes are appended to one bytearray (amortised O(1)) and a complete
    frame is removed from its front (O(1) in CPython), so reading a frame of n bytes in k pieces
    costs O(n + k), not O(n * k) as the upstream `bytes` concatenation did. The announced length
    is checked against `maxFrameSize` as soon as the 4 header bytes are in, before any of the
    frame is buffered: a peer cannot make this side hold more than one frame of that size.
    `maxFrameSize` may change between frames (a connection's limit grows once its peer
    authenticated).
    """

    def __init__(self, maxFrameSize):
        self.maxFrameSize = maxFrameSize
        self.__buffer = bytearray()
        self.__frameSize = None  # length of the frame being read, once its header is in

    def feed(self, data):
        self.__buffer += data

    def clear(self):
        self.__buffer = bytearray()
        self.__frameSize = None

    def bufferedBytes(self):
        return len(self.__buffer)

    def nextFrame(self):
        """The next complete frame as bytes, or None while it is incomplete. Raises FrameError
        when the announced length is negative or above `maxFrameSize`."""
        buf = self.__buffer
        if self.__frameSize is None:
            if len(buf) < _FRAME_HEADER.size:
                return None
            size = _FRAME_HEADER.unpack_from(buf, 0)[0]
            if size < 0 or size > self.maxFrameSize:
                raise FrameError('frame of %d bytes announced, limit %d' % (size, self.maxFrameSize))
            self.__frameSize = size
        end = _FRAME_HEADER.size + self.__frameSize
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            frame = bytes(view[_FRAME_HEADER.size:end])
        del buf[:end]
        self.__frameSize = None
        return frame

def _getAddrType(addr):
    try:
        socket.inet_aton(addr)
        return socket.AF_INET
    except socket.error:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, addr)
        return socket.AF_INET6
    except socket.error:
        pass
    raise Exception('unknown address type')

import socket

def set_keepalive_linux(sock, after_idle_sec=1, interval_sec=3, max_fails=5):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, after_idle_sec)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval_sec)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max_fails)

def set_keepalive_osx(sock, after_idle_sec=1, interval_sec=3, max_fails=5):
    TCP_KEEPALIVE = 0x10
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_KEEPALIVE, interval_sec)

def set_keepalive_windows(sock, after_idle_sec=1, interval_sec=3, max_fails=5):
    sock.ioctl(socket.SIO_KEEPALIVE_VALS, (1, after_idle_sec * 1000, interval_sec * 1000))

def set_keepalive(sock, after_idle_sec=1, interval_sec=3, max_fails=5):
    if platform == "linux" or platform == "linux2":
        set_keepalive_linux(sock, after_idle_sec, interval_sec, max_fails)
    elif platform == "darwin":
        set_keepalive_osx(sock, after_idle_sec, interval_sec, max_fails)
    elif platform == "win32":
        set_keepalive_windows(sock, after_idle_sec, interval_sec, max_fails)


# haagent: Linux socket options for quick retransmission on a cluster link (PATCHES.md).
# Python's socket module names neither of the newer two; the numbers are the kernel's ABI.
TCP_THIN_LINEAR_TIMEOUTS = 16   # since Linux 2.6.34
TCP_RTO_MIN_US = 45             # since Linux 6.15 (ENOPROTOOPT before)
TCP_DELACK_MAX_US = 46          # since Linux 6.15


def set_quick_retransmit(sock, rtoMinUs, delackMaxUs):
    """Make one lost segment cost milliseconds instead of Linux's 200 ms minimum RTO with
    exponential back-off (200, 400, 800 ms: a lease-sized stall after three losses).

    * rtoMinUs: the per-socket minimum retransmission timeout. The RTO still adapts to the
      measured RTT (srtt + 4 rttvar), so on a slow link it stays as large as it must be.
    * delackMaxUs: the longest this side delays an ACK, so that the peer's short RTO does not
      fire while our ACK waits.
    * thin linear timeouts: while fewer than 4 segments are in flight (heartbeats, appends),
      the first 6 retransmissions do not back off exponentially.
    Options the kernel lacks are skipped; none of this changes what is sent.
    """
    options = [(TCP_THIN_LINEAR_TIMEOUTS, 1)]
    options += [(opt, value) for opt, value in ((TCP_RTO_MIN_US, rtoMinUs),
                                                (TCP_DELACK_MAX_US, delackMaxUs))
                if value is not None]
    for opt, value in options:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, opt, int(value))
        except (OSError, ValueError):
            pass


class TcpConnection(object):

    def __init__(self, poller, onMessageReceived = None, onConnected = None, onDisconnected = None,
                 socket=None, timeout=10.0, sendBufferSize = 2 ** 13, recvBufferSize = 2 ** 13,
                 keepalive=None, maxFrameSize=DEFAULT_MAX_FRAME_SIZE,
                 handshakeFrameSize=DEFAULT_HANDSHAKE_FRAME_SIZE, readBudget=DEFAULT_READ_BUDGET,
                 rtoMinUs=None, delackMaxUs=None, quickRetransmit=False):
        self.sendRandKey = None
        self.recvRandKey = None
        self.recvLastTimestamp = 0
        self.encryptor = None

        # haagent: until the transport calls setAuthenticated(), frames are limited to
        # handshakeFrameSize and reads to one such frame per poll event.
        self.__maxFrameSize = maxFrameSize
        self.__handshakeFrameSize = handshakeFrameSize
        self.__readBudget = readBudget
        self.__authenticated = False
        self.__openedTime = monotonicTime()
        self.__lastFrameTime = self.__openedTime
        self.closeReason = None

        self.__socket = socket
        self.__reader = FrameReader(handshakeFrameSize)
        self.__writeBuffer = bytearray()
        self.__lastReadTime = monotonicTime()
        self.__timeout = timeout
        self.__poller = poller
        self.__keepalive = keepalive
        self.__quickRetransmit = (rtoMinUs, delackMaxUs) if quickRetransmit else None
        if socket is not None:
            self.__socket = socket
            self.__fileno = socket.fileno()
            self.__state = CONNECTION_STATE.CONNECTED
            self.setSockoptKeepalive()
            self.setSockoptQuickRetransmit()
            self.__poller.subscribe(self.__fileno,
                                     self.__processConnection,
                                     POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        else:
            self.__state = CONNECTION_STATE.DISCONNECTED
            self.__fileno = None
            self.__socket = None

        self.__onMessageReceived = onMessageReceived
        self.__onConnected = onConnected
        self.__onDisconnected = onDisconnected
        self.__sendBufferSize = sendBufferSize
        self.__recvBufferSize = recvBufferSize

    def setSockoptQuickRetransmit(self):
        if self.__socket is None or self.__quickRetransmit is None:
            return
        set_quick_retransmit(self.__socket, *self.__quickRetransmit)

    def setSockoptKeepalive(self):
        if self.__socket is None:
            return
        if self.__keepalive is None:
            return
        set_keepalive(
            self.__socket,
            self.__keepalive[0],
            self.__keepalive[1],
            self.__keepalive[2],
        )

    @property
    def authenticated(self):
        return self.__authenticated

    @property
    def openedTime(self):
        """When the socket was accepted or the connect started (monotonic)."""
        return self.__openedTime

    @property
    def lastFrameTime(self):
        """When the last complete, valid frame arrived (or the connection opened)."""
        return self.__lastFrameTime

    def setAuthenticated(self):
        """The peer proved it knows the cluster key (and, incoming, named a configured node):
        its frames may now be as large as maxFrameSize."""
        self.__authenticated = True
        self.__reader.maxFrameSize = self.__maxFrameSize

    def __resetHandshake(self):
        self.__authenticated = False
        self.__reader = FrameReader(self.__handshakeFrameSize)
        self.__openedTime = monotonicTime()
        self.__lastFrameTime = self.__openedTime

    def setOnConnectedCallback(self, onConnected):
        self.__onConnected = onConnected

    def setOnMessageReceivedCallback(self, onMessageReceived):
        self.__onMessageReceived = onMessageReceived

    def setOnDisconnectedCallback(self, onDisconnected):
        self.__onDisconnected = onDisconnected

    def connect(self, host, port):
        if host is None:
            return False
        self.__state = CONNECTION_STATE.DISCONNECTED
        self.__fileno = None
        self.__socket = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        self.__socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.__sendBufferSize)
        self.__socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.__recvBufferSize)
        self.__socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.setSockoptKeepalive()
        self.setSockoptQuickRetransmit()
        self.__socket.setblocking(0)
        self.__resetHandshake()
        self.__writeBuffer = bytearray()
        self.__lastReadTime = monotonicTime()
        self.closeReason = None

        try:
            self.__socket.connect((host, port))
        except socket.error as e:
            if e.errno not in (socket.errno.EINPROGRESS, socket.errno.EWOULDBLOCK):
                return False
        self.__fileno = self.__socket.fileno()
        self.__state = CONNECTION_STATE.CONNECTING
        self.__poller.subscribe(self.__fileno,
                                 self.__processConnection,
                                 POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        return True

    def send(self, message):
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = compressFrame(pickle.dumps(message))
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(monotonicTime()))
        self.__writeBuffer += struct.pack('i', len(data))
        self.__writeBuffer += data
        self.__trySendBuffer()

    def fileno(self):
        return self.__fileno

    def disconnect(self, reason=None):
        if reason is not None and self.__state != CONNECTION_STATE.DISCONNECTED:
            self.closeReason = reason
        needCallDisconnect = False
        if self.__onDisconnected is not None and self.__state != CONNECTION_STATE.DISCONNECTED:
            needCallDisconnect = True
        self.sendRandKey = None
        self.recvRandKey = None
        self.recvLastTimestamp = 0
        if self.__socket is not None:
            self.__socket.close()
            self.__socket = None
        if self.__fileno is not None:
            self.__poller.unsubscribe(self.__fileno)
            self.__fileno = None
        self.__writeBuffer = bytearray()
        self.__reader.clear()
        self.__authenticated = False
        self.__state = CONNECTION_STATE.DISCONNECTED
        if needCallDisconnect:
            self.__onDisconnected()

    def getSendBufferSize(self):
        return len(self.__writeBuffer)

    def __processConnection(self, descr, eventType):
        poller = self.__poller
        if descr != self.__fileno:
            poller.unsubscribe(descr)
            return

        if eventType & POLL_EVENT_TYPE.ERROR:
            self.disconnect()
            return

        self.__processConnectionTimeout()
        if self.state == CONNECTION_STATE.DISCONNECTED:
            return

        if eventType & POLL_EVENT_TYPE.READ or eventType & POLL_EVENT_TYPE.WRITE:
            if self.__socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return

            if self.__state == CONNECTION_STATE.CONNECTING:
                if self.__onConnected is not None:
                    self.__onConnected()
                if self.__state == CONNECTION_STATE.DISCONNECTED:
                    return
                self.__state = CONNECTION_STATE.CONNECTED
                self.__lastReadTime = monotonicTime()
                return

        if eventType & POLL_EVENT_TYPE.WRITE:
            self.__trySendBuffer()
            if self.__state == CONNECTION_STATE.DISCONNECTED:
                return
            event = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
            if len(self.__writeBuffer) > 0:
                event |= POLL_EVENT_TYPE.WRITE
            poller.subscribe(descr, self.__processConnection, event)

        if eventType & POLL_EVENT_TYPE.READ:
            self.__tryReadBuffer()
            if self.__state == CONNECTION_STATE.DISCONNECTED:
                return

            while True:
                message = self.__processParseMessage()
                if message is None:
                    break
                if self.__onMessageReceived is not None:
                    self.__onMessageReceived(message)
                if self.__state == CONNECTION_STATE.DISCONNECTED:
                    return

    def __processConnectionTimeout(self):
        if monotonicTime() - self.__lastReadTime > self.__timeout:
            # haagent: "no data for the timeout" is judged by this process's clock, which
            # also runs while this process is stalled (a starved or paused tick thread): bytes
            # waiting in the socket prove the peer alive, so look before disconnecting (the
            # read that follows, or the next poll event, takes them).
            if self.__state == CONNECTION_STATE.CONNECTED and self.__peerDataWaiting():
                self.__lastReadTime = monotonicTime()
                return
            self.disconnect()
            return

    def __peerDataWaiting(self):
        try:
            return bool(self.__socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except socket.error:
            return False

    def __trySendBuffer(self):
        self.__processConnectionTimeout()
        if self.state == CONNECTION_STATE.DISCONNECTED:
            return
        while self.__processSend():
            pass

    def __processSend(self):
        if not self.__writeBuffer:
            return False
        try:
            res = self.__socket.send(self.__writeBuffer)
            if res < 0:
                self.disconnect()
                return False
            if res == 0:
                return False
            del self.__writeBuffer[:res]  # O(1) at the front of a bytearray
            return True
        except socket.error as e:
            if e.errno not in (socket.errno.EAGAIN, socket.errno.EWOULDBLOCK):
                self.disconnect()
            return False

    def __tryReadBuffer(self):
        # haagent: read at most the budget per poll event (one handshake frame before the peer
        # authenticated): what is left stays in the socket, the poller reports it again on the
        # next tick, and the Raft loop gets to run in between.
        if self.__authenticated:
            budget = self.__readBudget
        else:
            budget = self.__handshakeFrameSize + _FRAME_HEADER.size
        while budget > 0:
            got = self.__processRead(min(self.__recvBufferSize, budget))
            if not got:
                break
            budget -= got
        self.__lastReadTime = monotonicTime()

    def __processRead(self, size):
        try:
            incoming = self.__socket.recv(size)
        except socket.error as e:
            if e.errno not in (socket.errno.EAGAIN, socket.errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if self.__socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return False
        if not incoming:
            self.disconnect()
            return False
        self.__reader.feed(incoming)
        return len(incoming)

    def __processParseMessage(self):
        try:
            data = self.__reader.nextFrame()
        except FrameError:
            self.disconnect('oversized frame')
            return None
        if data is None:
            return None
        try:
            if self.encryptor:
                # haagent: one signature check and one base64 decode for both.
                dataTimestamp, data = self.encryptor.decrypt_with_timestamp(data)
                assert dataTimestamp >= self.recvLastTimestamp
                self.recvLastTimestamp = dataTimestamp
            # haagent: a frame within the limit must not inflate beyond it either.
            limit = self.__reader.maxFrameSize
            decompressor = zlib.decompressobj()
            plain = decompressor.decompress(data, limit)
            if decompressor.unconsumed_tail or not decompressor.eof:
                raise FrameError('frame inflates beyond %d bytes' % limit)
            message = pickle.loads(plain)
            if self.recvRandKey:
                randKey, message = message
                assert randKey == self.recvRandKey
        except:
            # Why no logging of security errors? (haagent: the transport counts closeReason.)
            self.disconnect('bad frame')
            return None
        self.__lastFrameTime = monotonicTime()
        return message

    @property
    def state(self):
        return self.__state
