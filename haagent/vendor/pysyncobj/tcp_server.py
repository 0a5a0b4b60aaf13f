import errno
import socket

from .poller import POLL_EVENT_TYPE
from .tcp_connection import TcpConnection, _getAddrType, set_quick_retransmit


_TRANSIENT_ACCEPT_ERRORS = (
    errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPROTO,
    errno.EPERM, errno.EINTR,
)


class SERVER_STATE:
    UNBINDED = 0,
    BINDED = 1


class TcpServer(object):

    def __init__(
            self, poller, host, port, onNewConnection,
            sendBufferSize = 2 ** 13,
            recvBufferSize = 2 ** 13,
            connectionTimeout = 3.5,
            keepalive = None,
            connectionKwargs = None,
            acceptBatch = 16,
            listenBacklog = 64,
    ):
        self.__poller = poller
        self.__host = host
        self.__port = int(port)
        self.__hostAddrType = _getAddrType(host)
        self.__sendBufferSize = sendBufferSize
        self.__recvBufferSize = recvBufferSize
        self.__socket = None
        self.__fileno = None
        self.__keepalive = keepalive
        self.__state = SERVER_STATE.UNBINDED
        self.__onNewConnectionCallback = onNewConnection
        self.__connectionTimeout = connectionTimeout
        # haagent: limits passed to every accepted TcpConnection (frame sizes, read budget).
        self.__connectionKwargs = dict(connectionKwargs or {})
        self.__acceptBatch = acceptBatch
        self.__listenBacklog = listenBacklog

    def bind(self):
        self.__socket = socket.socket(self.__hostAddrType, socket.SOCK_STREAM)
        self.__socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.__sendBufferSize)
        self.__socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.__recvBufferSize)
        self.__socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.__socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # haagent: on the listener too, so that an accepted socket has the short minimum RTO
        # from its handshake on (set only after accept, it would keep the 200 ms RTO computed
        # during the handshake until its next RTT sample).
        if self.__connectionKwargs.get('quickRetransmit'):
            set_quick_retransmit(self.__socket, self.__connectionKwargs.get('rtoMinUs'),
                                 self.__connectionKwargs.get('delackMaxUs'))
        self.__socket.setblocking(0)
        self.__socket.bind((self.__host, self.__port))
        self.__socket.listen(self.__listenBacklog)
        self.__fileno = self.__socket.fileno()
        self.__poller.subscribe(self.__fileno,
                                self.__onNewConnection,
                                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)
        self.__state = SERVER_STATE.BINDED

    def unbind(self):
        self.__state = SERVER_STATE.UNBINDED
        if self.__fileno is not None:
            self.__poller.unsubscribe(self.__fileno)
            self.__fileno = None
        if self.__socket is not None:
            self.__socket.close()

    def __onNewConnection(self, descr, event):
        if event & POLL_EVENT_TYPE.READ:
            # haagent: accept up to acceptBatch connections per tick (upstream: one), so that
            # a flood is drained from the listen queue (and dropped by the transport) instead
            # of keeping the queue full while peers try to reconnect.
            for _ in range(self.__acceptBatch):
                try:
                    sock, addr = self.__socket.accept()
                except socket.error as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        break
                    if e.errno in _TRANSIENT_ACCEPT_ERRORS:
                        # haagent: out of file descriptors or memory, or the peer gave up
                        # before accept: upstream unbound the server for good here, which
                        # cut this node off from every peer that dials it. Keep listening.
                        break
                    self.unbind()
                    return
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.__sendBufferSize)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.__recvBufferSize)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setblocking(0)
                except socket.error:
                    sock.close()  # reset before we got to it
                    continue
                conn = TcpConnection(
                    poller=self.__poller,
                    socket=sock,
                    timeout=self.__connectionTimeout,
                    sendBufferSize=self.__sendBufferSize,
                    recvBufferSize=self.__recvBufferSize,
                    keepalive=self.__keepalive,
                    **self.__connectionKwargs
                )
                self.__onNewConnectionCallback(conn)

        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()
            return
