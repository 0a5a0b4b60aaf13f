import errno
import json
import logging
import os
import struct
import zlib

from .atomic_replace import atomicReplace
from .pickle import to_bytes

logger = logging.getLogger(__name__)

class Journal(object):

    def add(self, command, idx, term):
        raise NotImplementedError

    def clear(self):
        raise NotImplementedError

    def deleteEntriesFrom(self, entryFrom):
        raise NotImplementedError

    def deleteEntriesTo(self, entryTo):
        raise NotImplementedError

    def __getitem__(self, item):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def _destroy(self):
        raise NotImplementedError

    def setRaftCommitIndex(self, raftCommitIndex):
        raise NotImplementedError

    def getRaftCommitIndex(self):
        raise NotImplementedError

    def setCurrentTerm(self, term, votedForNodeId):
        raise NotImplementedError

    def getCurrentTerm(self):
        raise NotImplementedError

    def getVotedForNodeId(self):
        raise NotImplementedError

    def onOneSecondTimer(self):
        pass


class MemoryJournal(Journal):

    def __init__(self):
        self.__journal = []
        self.__bytesSize = 0
        self.__lastCommitIndex = 0
        self.__currentTerm = 0
        self.__votedForNodeId = None

    def add(self, command, idx, term):
        self.__journal.append((command, idx, term))

    def clear(self):
        self.__journal = []

    def deleteEntriesFrom(self, entryFrom):
        del self.__journal[entryFrom:]

    def deleteEntriesTo(self, entryTo):
        self.__journal = self.__journal[entryTo:]

    def __getitem__(self, item):
        return self.__journal[item]

    def __len__(self):
        return len(self.__journal)

    def _destroy(self):
        pass

    def setRaftCommitIndex(self, raftCommitIndex):
        pass

    def getRaftCommitIndex(self):
        return 1

    def setCurrentTerm(self, term, votedForNodeId):
        self.__currentTerm = term
        self.__votedForNodeId = votedForNodeId

    def getCurrentTerm(self):
        return self.__currentTerm

    def getVotedForNodeId(self):
        return self.__votedForNodeId


# haagent: a durable journal replaces upstream's FileJournal (an mmap flushed only on close,
# and a meta file renamed without fsync). See PATCHES.md.

class JournalCorrupt(Exception):
    """The journal is damaged beyond a torn tail: refuse to start rather than guess."""


class JournalStorageError(OSError):
    """Term and vote could not be made durable; nothing reflecting them may be sent."""


JOURNAL_MAGIC = b'HAJOURNAL1\n'
META_MAGIC = b'HAMETA1\n'
COMMIT_MAGIC = b'HACOMMIT1\n'
_FRAME = struct.Struct('<II')     # payload length, crc32(payload)
_ENTRY = struct.Struct('<QQ')     # idx, term; the command bytes follow
DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024


def _frame(payload):
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _unframe(data, offset):
    """(payload, next offset), or None when no complete frame with a valid CRC starts here."""
    if len(data) - offset < _FRAME.size:
        return None
    size, crc = _FRAME.unpack_from(data, offset)
    start = offset + _FRAME.size
    if size > len(data) - start:
        return None
    payload = bytes(data[start:start + size])
    if zlib.crc32(payload) != crc:
        return None
    return payload, start + size


def _readSmallFile(path, magic):
    """The framed payload of a small file written by _writeSmallFile; None if missing;
    JournalCorrupt if present but not valid."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None
    got = _unframe(data, len(magic)) if data.startswith(magic) else None
    if got is None or got[1] != len(data):
        raise JournalCorrupt('%s: damaged (%d bytes, no valid record)' % (path, len(data)))
    return got[0]


def _writeSmallFile(path, magic, payload, durable):
    """Write to a temporary file, fsync it, rename it over `path` and fsync the directory."""
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = magic + _frame(payload)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if durable:
        atomicReplace(tmp, path)
    else:
        os.rename(tmp, path)


def freeBytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FileJournal(Journal):
    """Append-only journal: a header, then one frame per entry (length, CRC32, idx, term,
    command). `add` only buffers; `flush` writes everything buffered with one fsync and
    returns whether the whole log is now durable. SyncObj acknowledges appends, and counts
    the leader itself toward a commit, only after `flush` returned True.

    Term and vote live in `<journal>.meta`, written to a temporary file, fsynced, renamed and
    the directory fsynced before `setCurrentTerm` returns. The commit index is a hint in
    `<journal>.commit` (not fsynced, clamped to the log on load): it only lets a restarted
    node apply what it already knows was committed before it hears from a leader.

    On open, a torn tail (an incomplete or unreadable last frame, or zeros up to the end of
    the file) is truncated and logged; any other damage raises JournalCorrupt.

    Writes stop, with `storageError` set, while the file system has less than
    `reserveBytes` free, so a full disk is reported before a write can fail half way.
    """

    def __init__(self, journalFile, reserveBytes=DEFAULT_RESERVE_BYTES):
        self.__path = journalFile
        self.__dir = os.path.dirname(os.path.abspath(journalFile))
        self.__metaPath = journalFile + '.meta'
        self.__commitPath = journalFile + '.commit'
        self.reserveBytes = reserveBytes
        self.storageError = None
        self.truncations = 0
        self.__journal = []
        self.__offsets = []       # file offset of each entry's frame, as if pending were written
        self.__pending = bytearray()
        self.__fd = None
        self.__commitIndex = 1
        self.__savedCommitIndex = None

        meta = _readSmallFile(self.__metaPath, META_MAGIC)
        if meta is None:
            if os.path.exists(journalFile):
                raise JournalCorrupt('%s exists but its term/vote file %s is missing'
                                     % (journalFile, self.__metaPath))
            self.__term, self.__votedFor = 0, None
            _writeSmallFile(self.__metaPath, META_MAGIC, self.__metaPayload(), True)
        else:
            try:
                doc = json.loads(meta.decode())
                self.__term, self.__votedFor = int(doc['term']), doc['voted_for']
            except (ValueError, KeyError, TypeError):
                raise JournalCorrupt('%s: unreadable term/vote record' % self.__metaPath)

        if not os.path.exists(journalFile):
            if self.__term != 0:
                raise JournalCorrupt('%s is missing but %s says term %d'
                                     % (journalFile, self.__metaPath, self.__term))
            self.__createEmpty(journalFile)
        self.__fd = os.open(journalFile, os.O_RDWR)
        self.__load()

        try:
            hint = _readSmallFile(self.__commitPath, COMMIT_MAGIC)
            if hint is not None:
                self.__commitIndex = max(1, int(hint.decode()))
        except (JournalCorrupt, ValueError):
            logger.warning('%s: unreadable commit index hint, ignored', self.__commitPath)
        if self.__journal:
            self.__commitIndex = min(self.__commitIndex, self.__journal[-1][1])

    # -- files ---------------------------------------------------------------------------

    def __createEmpty(self, path):
        tmp = path + '.new'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, JOURNAL_MAGIC)
            os.fsync(fd)
        finally:
            os.close(fd)
        atomicReplace(tmp, path)

    def __load(self):
        size = os.fstat(self.__fd).st_size
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            n = os.preadv(self.__fd, [view[got:]], got)
            if n <= 0:
                break
            got += n
        if not data.startswith(JOURNAL_MAGIC):
            if JOURNAL_MAGIC.startswith(bytes(data)) or not any(data):
                # Created but its header never reached the disk: an empty journal.
                logger.warning('%s: incomplete header (%d bytes), starting it empty',
                               self.__path, size)
                self.__truncateFile(0)
                os.pwrite(self.__fd, JOURNAL_MAGIC, 0)
                os.fsync(self.__fd)
                self.__durable = len(JOURNAL_MAGIC)
                return
            raise JournalCorrupt('%s: not a haagent journal (wrong header)' % self.__path)
        offset = len(JOURNAL_MAGIC)
        while offset < size:
            got = _unframe(data, offset)
            if got is None or not any(data[offset:offset + _FRAME.size]):
                break  # no frame here (zeros: space the file system extended, never written)
            payload, nextOffset = got
            if len(payload) < _ENTRY.size:
                raise JournalCorrupt('%s: short entry at offset %d' % (self.__path, offset))
            idx, term = _ENTRY.unpack_from(payload)
            if self.__journal:
                prevIdx, prevTerm = self.__journal[-1][1], self.__journal[-1][2]
                if idx != prevIdx + 1 or term < prevTerm:
                    raise JournalCorrupt('%s: entry %d (term %d) at offset %d follows entry %d '
                                         '(term %d)' % (self.__path, idx, term, offset,
                                                        prevIdx, prevTerm))
            self.__journal.append((payload[_ENTRY.size:], idx, term))
            self.__offsets.append(offset)
            offset = nextOffset
        if offset < size:
            if not self.__isTornTail(data, offset):
                raise JournalCorrupt('%s: damaged entry at offset %d of %d, followed by more '
                                     'data (after entry %s)' % (
                                         self.__path, offset, size,
                                         self.__journal[-1][1] if self.__journal else 'none'))
            logger.warning('%s: torn tail: truncating %d bytes after entry %s (offset %d)',
                           self.__path, size - offset,
                           self.__journal[-1][1] if self.__journal else 'none', offset)
            self.__truncateFile(offset)
            os.fsync(self.__fd)
        self.__durable = offset
        if self.__journal and self.__journal[-1][2] > self.__term:
            raise JournalCorrupt('%s: last entry has term %d but %s says term %d' % (
                self.__path, self.__journal[-1][2], self.__metaPath, self.__term))

    @staticmethod
    def __isTornTail(data, offset):
        """What an interrupted append leaves: a last frame that runs past the end of the
        file or fails its CRC with nothing after it, or zeros (a length the file system
        extended but never wrote)."""
        if not any(data[offset:]):
            return True
        if len(data) - offset < _FRAME.size:
            return True
        size, _ = _FRAME.unpack_from(data, offset)
        return offset + _FRAME.size + size >= len(data)

    def __truncateFile(self, offset):
        os.ftruncate(self.__fd, offset)

    def __metaPayload(self):
        return json.dumps({'term': self.__term, 'voted_for': self.__votedFor}).encode()

    # -- durability ----------------------------------------------------------------------

    def flush(self):
        """Write what `add` buffered and fsync it: one fsync for the whole burst. Returns
        True when every entry is durable; False (with `storageError`) when the disk is full
        or failing, in which case nothing may be acknowledged."""
        if not self.__pending and self.storageError is None:
            return True
        try:
            free = freeBytes(self.__dir)
            if free - len(self.__pending) < self.reserveBytes:
                return self.__fail('disk full: %d MiB free, %d MiB reserved' % (
                    free // 2**20, self.reserveBytes // 2**20))
            if not self.__pending:
                return self.__clearError()
            view, offset = memoryview(bytes(self.__pending)), self.__durable
            while view:
                written = os.pwrite(self.__fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(self.__fd)
        except OSError as e:
            try:
                self.__truncateFile(self.__durable)
            except OSError:
                pass
            what = 'disk full' if e.errno in (errno.ENOSPC, errno.EDQUOT) else 'write failed'
            return self.__fail('%s: %s' % (what, os.strerror(e.errno or 0)))
        self.__durable += len(self.__pending)
        self.__pending = bytearray()
        return self.__clearError()

    def __fail(self, why):
        if self.storageError != why:
            logger.error('%s: %s; not acknowledging new entries until it is fixed',
                         self.__path, why)
        self.storageError = why
        return False

    def __clearError(self):
        if self.storageError is not None:
            logger.warning('%s: writing again (was: %s)', self.__path, self.storageError)
            self.storageError = None
        return True

    def durableIndex(self):
        """Index of the last entry on disk (0 if none)."""
        for i in range(len(self.__journal) - 1, -1, -1):
            if self.__offsets[i] < self.__durable:
                return self.__journal[i][1]
        return 0

    # -- pysyncobj's Journal interface ---------------------------------------------------

    def add(self, command, idx, term):
        command = to_bytes(command)
        self.__offsets.append(self.__durable + len(self.__pending))
        self.__journal.append((command, idx, term))
        self.__pending += _frame(_ENTRY.pack(idx, term) + command)

    def clear(self):
        self.deleteEntriesFrom(0)

    def __getitem__(self, idx):
        return self.__journal[idx]

    def __len__(self):
        return len(self.__journal)

    def deleteEntriesFrom(self, entryFrom):
        if entryFrom >= len(self.__journal):
            return
        # From 0 (clear): also drop a prefix deleteEntriesTo left in the file.
        offset = self.__offsets[entryFrom] if entryFrom else len(JOURNAL_MAGIC)
        del self.__journal[entryFrom:]
        del self.__offsets[entryFrom:]
        self.truncations += 1
        if offset >= self.__durable:
            del self.__pending[offset - self.__durable:]
            return
        # Entries on disk go now; whatever is appended next reaches the disk (and is
        # acknowledged) only with the next flush.
        self.__pending = bytearray()
        self.__truncateFile(offset)
        self.__durable = offset

    def deleteEntriesTo(self, entryTo):
        """Drop entries before entryTo (they are in a durable snapshot). The file keeps them
        until it can be rewritten; the entries kept stay at their offsets until then."""
        del self.__journal[:entryTo]
        del self.__offsets[:entryTo]
        if not self.__journal or self.__offsets[0] - len(JOURNAL_MAGIC) < 1024 * 1024:
            return
        if not self.flush():
            return
        tmp = self.__path + '.new'
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                base = self.__offsets[0] - len(JOURNAL_MAGIC)
                data = bytearray(JOURNAL_MAGIC)
                data += os.pread(self.__fd, self.__durable - self.__offsets[0], self.__offsets[0])
                view = memoryview(bytes(data))
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            atomicReplace(tmp, self.__path)
        except OSError as e:
            logger.warning('%s: could not compact (%s); keeping the longer file',
                           self.__path, e)
            return
        os.close(self.__fd)
        self.__fd = os.open(self.__path, os.O_RDWR)
        self.__offsets = [o - base for o in self.__offsets]
        self.__durable -= base

    def _destroy(self):
        if self.__fd is not None:
            self.flush()
            self.onOneSecondTimer()
            os.close(self.__fd)
            self.__fd = None

    def setRaftCommitIndex(self, raftCommitIndex):
        self.__commitIndex = raftCommitIndex

    def getRaftCommitIndex(self):
        return self.__commitIndex

    def setCurrentTerm(self, term, votedForNodeId):
        if (term, votedForNodeId) == (self.__term, self.__votedFor):
            return
        old = self.__term, self.__votedFor
        self.__term, self.__votedFor = term, votedForNodeId
        try:
            _writeSmallFile(self.__metaPath, META_MAGIC, self.__metaPayload(), True)
        except OSError as e:
            self.__term, self.__votedFor = old
            self.__fail('term/vote not saved: %s' % os.strerror(e.errno or 0))
            raise JournalStorageError(e.errno, 'term/vote not saved: %s' % e)

    def getCurrentTerm(self):
        return self.__term

    def getVotedForNodeId(self):
        return self.__votedFor

    def onOneSecondTimer(self):
        commitIndex = min(self.__commitIndex, self.durableIndex())
        if commitIndex == self.__savedCommitIndex or commitIndex <= 1:
            return
        try:
            _writeSmallFile(self.__commitPath, COMMIT_MAGIC, str(commitIndex).encode(), False)
            self.__savedCommitIndex = commitIndex
        except OSError:
            pass  # only a hint


def createJournal(journalFile = None):
    if journalFile is None:
        return MemoryJournal()
    return FileJournal(journalFile)
