# cython: language_level=3, embedsignature=True
"""Compiled twin of ``fastsmtp._wire_py``: the byte-level hot path, scanned in C.

One job: turn the bytes a client sends into command lines and message bodies. It knows
nothing of replies, states or listeners, and it never does I/O.

The Python twin is the reference and owns the shared definitions (``LineTooLong``, the
default line limit); this module imports them. Both give identical results for identical
input however it is chunked, and ``tests/test_wire_parity.py`` holds them to it.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
    _PyBytes_Resize,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_CLEAR, Py_INCREF
from libc.string cimport memchr, memcpy, memmove

from cpython.unicode cimport PyUnicode_DecodeASCII

import os
import sys

from fastsmtp._wire_py import (
    DEFAULT_MAX_LINE_LENGTH,
    MAX_DOMAIN_LENGTH,
    MAX_LABEL_LENGTH,
    LineTooLong,
)

__all__ = [
    "CTRL",
    "DEFAULT_MAX_LINE_LENGTH",
    "EIGHT_BIT",
    "MAX_DOMAIN_LENGTH",
    "MAX_LABEL_LENGTH",
    "LineTooLong",
    "WireReader",
    "classify_command",
    "plain_path",
    "split_command",
]

cdef enum:
    # Bits returned by classify_command(), duplicated as C values for the lookup table;
    # tests/test_wire_parity.py checks they equal the Python twin's.
    _CTRL = 1
    _EIGHT_BIT = 2

    # Octets the scanners look for.
    _LF = 0x0A
    _CR = 0x0D
    _SP = 0x20
    _DOT = 0x2E
    _HYPHEN = 0x2D
    _LESS = 0x3C
    _GREATER = 0x3E
    _AT = 0x40

    # Bits of _ADDRESS: an octet of RFC 5322 atext; of a domain label (letter, digit, hyphen).
    _ATEXT = 1
    _LDH = 2

    # Same DATA layout as the Python twin, which explains it in read_data(): the buffer
    # starts with 2 octets already accounted for, and the last 4 wait for more input.
    _CONTEXT = 2
    _HOLD_BACK = 4
    _MARKER_LEN = 5

    # Buffers start this small; an idle one above _KEEP_CAPACITY is given back.
    _MIN_CAPACITY = 4096
    _KEEP_CAPACITY = 256 * 1024

    # A body doubles its room up to this size, then grows by a quarter at a time.
    _GROW_SLOWLY_FROM = 4 * 1024 * 1024

    # A body whose room reaches _MAP_FROM moves at once into _MAPPED_ROOM (see _map_body),
    # where mapping_pays() says that costs nothing.
    _MAP_FROM = 1024 * 1024
    _MAPPED_ROOM = 33 * 1024 * 1024

# C copies of the Python twin's bit values.
CTRL = _CTRL
EIGHT_BIT = _EIGHT_BIT

cdef bytes _EMPTY = b""


cdef extern from *:
    """
    #include <stdlib.h>
    #if defined(__GLIBC__)
    #define FASTSMTP_GLIBC 1
    #else
    #define FASTSMTP_GLIBC 0
    #endif
    #if defined(Py_GIL_DISABLED)
    #define FASTSMTP_FREE_THREADED 1
    #else
    #define FASTSMTP_FREE_THREADED 0
    #endif
    """
    const int FASTSMTP_GLIBC
    const int FASTSMTP_FREE_THREADED  # such builds allocate objects with mimalloc


def mapping_pays():
    """True if room asked for but never written costs this process nothing: see _map_body.

    That takes glibc's malloc under CPython's own allocators on a 64-bit machine, and neither
    strict overcommit nor an address-space or data limit, which count the whole room as soon
    as it is mapped. Not the debug allocator either (``-X dev``, ``PYTHONMALLOC=debug``, a
    debug build), which writes every octet, nor another malloc (mimalloc, jemalloc, tcmalloc
    preloaded), which may copy where glibc moves pages.
    """
    if not FASTSMTP_GLIBC or FASTSMTP_FREE_THREADED or sizeof(void*) < 8:
        return False
    if sys.flags.dev_mode or hasattr(sys, "gettotalrefcount"):
        return False
    if not sys.flags.ignore_environment:
        if os.environ.get("PYTHONMALLOC", "") not in ("", "default", "malloc", "pymalloc"):
            return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        with open("/proc/sys/vm/overcommit_memory", "rb") as setting:
            if setting.read().strip() == b"2":
                return False
    except OSError:
        pass
    try:
        import resource

        limits = [resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_DATA)]
    except (ImportError, AttributeError, OSError, ValueError):
        return False
    return all(soft == resource.RLIM_INFINITY for soft, _ in limits)


# Decided once: a limit set after import is met by _map_body's fallback.
cdef bint _MAP_BODIES = mapping_pays()


cdef extern from "Python.h":
    # The macro on a borrowed pointer: the body is held as PyObject* for _PyBytes_Resize.
    char* _bytes_data "PyBytes_AS_STRING" (PyObject* op) nogil

# What classify_command() reports per octet. Horizontal tab is let through: some clients
# separate parameters with it.
cdef unsigned char _CLASS[256]


cdef void _fill_class_table() noexcept:
    cdef int octet
    for octet in range(256):
        if octet >= 0x80:
            _CLASS[octet] = _EIGHT_BIT
        elif (octet < 0x20 and octet != 0x09) or octet == 0x7F:
            _CLASS[octet] = _CTRL
        else:
            _CLASS[octet] = 0


_fill_class_table()

# What plain_path() lets through per octet (see _ATEXT and _LDH).
cdef unsigned char _ADDRESS[256]


cdef void _fill_address_table() noexcept:
    cdef const unsigned char* specials = b"!#$%&'*+-/=?^_`{|}~"
    cdef int octet
    for octet in range(256):
        if (0x30 <= octet <= 0x39) or (0x41 <= octet <= 0x5A) or (0x61 <= octet <= 0x7A):
            _ADDRESS[octet] = _ATEXT | _LDH
        else:
            _ADDRESS[octet] = 0
    while specials[0]:
        _ADDRESS[specials[0]] |= _ATEXT
        specials += 1
    _ADDRESS[_HYPHEN] |= _LDH


_fill_address_table()

cdef Py_ssize_t _MAX_DOMAIN = MAX_DOMAIN_LENGTH
cdef Py_ssize_t _MAX_LABEL = MAX_LABEL_LENGTH


cdef struct _Scan:
    Py_ssize_t cut      # content is p[_CONTEXT:cut]
    Py_ssize_t content  # unstuffed octets in it
    bint       marker   # the end marker starts at cut - 2
    bint       bare     # a CR or LF of the content is not part of a CRLF pair


cdef Py_ssize_t _clamp(object value) except? -1:
    """Return an int argument as a C size; limits beyond it behave as unlimited anyway."""
    if value > PY_SSIZE_T_MAX:
        return PY_SSIZE_T_MAX
    return value


cdef int _open_view(object data, Py_buffer* view) except -1:
    """Fill ``view`` with the octets of a bytes-like object other than exact ``bytes``."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except BufferError:
        # Same error type as the Python twin gives for a non-contiguous memoryview.
        raise TypeError(
            f"a contiguous bytes-like object is required, not {type(data).__name__!r}"
        ) from None
    return 0


cdef void _scan_data(
    const unsigned char* p, Py_ssize_t n, unsigned char* out, bint check_bare, _Scan* res
) noexcept nogil:
    """Scan DATA octets ``p[:n]`` (n >= 5) laid out as in WireReader.read_data().

    One pass over the LFs finds the end marker, the stuffed dots and the bare line
    endings. Content octets are copied into ``out`` (unless it is NULL) with every dot
    that follows CRLF dropped (RFC 5321 §4.5.2). Without a marker, the content ends at
    ``n - _HOLD_BACK``; ``res.cut <= _CONTEXT`` then means nothing can be accounted yet.
    """
    # An LF up to here has the 3 octets after it that tell a marker from a stuffed dot.
    cdef Py_ssize_t last = n - _HOLD_BACK
    cdef Py_ssize_t cut = n - _HOLD_BACK
    cdef Py_ssize_t pos = 1  # the context LF counts: a dot right after it is stuffed
    cdef Py_ssize_t seg = _CONTEXT  # where the search for a bare CR resumes
    cdef Py_ssize_t copy_from = _CONTEXT
    cdef Py_ssize_t written = 0
    cdef Py_ssize_t lf
    cdef const unsigned char* hit
    cdef bint crlf
    cdef bint bare = False
    cdef bint marker = False

    while pos <= last:
        hit = <const unsigned char*>memchr(p + pos, _LF, <size_t>(last + 1 - pos))
        if hit == NULL:
            break
        lf = hit - p
        pos = lf + 1
        crlf = p[lf - 1] == _CR

        # Every CR between the previous LF and the one just before this LF is bare.
        if check_bare and not bare and lf - 1 > seg:
            bare = memchr(p + seg, _CR, <size_t>(lf - 1 - seg)) != NULL

        if crlf and p[lf + 1] == _DOT:
            if p[lf + 2] == _CR and p[lf + 3] == _LF:
                cut = lf + 1  # the CRLF before the dot belongs to the message
                marker = True
                break
            if lf + 1 < cut:
                if out != NULL:
                    memcpy(out + written, p + copy_from, <size_t>(lf + 1 - copy_from))
                written += lf + 1 - copy_from
                copy_from = lf + 2

        # An LF at the cut is held back; it is judged with the next chunk.
        if check_bare and not crlf and _CONTEXT <= lf < cut:
            bare = True
        seg = lf + 1

    res.marker = marker
    res.cut = cut
    if not marker and cut <= _CONTEXT:
        res.content = 0
        res.bare = False
        return

    # After the last LF, any CR before the cut is bare: its successor is no LF.
    if check_bare and not bare and not marker and seg < cut:
        bare = memchr(p + seg, _CR, <size_t>(cut - seg)) != NULL

    if out != NULL:
        memcpy(out + written, p + copy_from, <size_t>(cut - copy_from))
    written += cut - copy_from
    res.content = written
    res.bare = bare


cdef class WireReader:
    """Buffer one connection's input and cut it into command lines or DATA content.

    In command mode, ``next_line()`` yields one line at a time. After ``start_data()``,
    ``read_data()`` consumes message content up to ``CRLF . CRLF``, unstuffing dots and
    counting octets as it goes; whatever follows the marker stays buffered for commands.
    """

    cdef:
        # Received octets live in _buf[_start:_end]; _cap is the allocation size.
        unsigned char* _buf
        Py_ssize_t     _start
        Py_ssize_t     _end
        Py_ssize_t     _cap
        Py_ssize_t     _scan_from   # where the search for LF resumes, from _start
        bint           _discarding  # inside the tail of an over-long command line
        Py_ssize_t     _max_line
        object         _max_line_obj

        bint           _in_data
        Py_ssize_t     _data_limit
        Py_ssize_t     _size_hint   # room to make at the first growth, 0 for none
        PyObject*      _body        # owned bytes object the content is written into
        Py_ssize_t     _body_len    # content octets in it
        Py_ssize_t     _body_cap    # its size as a bytes object; 0 without one
        Py_ssize_t     _data_size
        bint           _data_overflow
        bint           _data_bare_eol

    def __init__(self, max_line_length=DEFAULT_MAX_LINE_LENGTH):
        if max_line_length < 3:
            raise ValueError(f"max_line_length must be at least 3, got {max_line_length}")
        self._max_line = _clamp(max_line_length)
        self._max_line_obj = max_line_length
        self._free_buffers()
        self._scan_from = 0
        self._discarding = False

        self._in_data = False
        self._data_limit = 0
        self._size_hint = 0
        self._data_size = 0
        self._data_overflow = False
        self._data_bare_eol = False

    def __dealloc__(self):
        self._free_buffers()

    @property
    def max_line_length(self):
        """Longest command line accepted, in octets including its line ending."""
        return self._max_line_obj

    @max_line_length.setter
    def max_line_length(self, value):
        self._max_line = _clamp(value)
        self._max_line_obj = value

    # Command mode

    def feed(self, data):
        """Append bytes received from the client."""
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            self._append(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        _open_view(data, &view)
        try:
            self._append(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def next_line(self):
        """Return the next command line without its line ending, or None if incomplete.

        A line ends at LF; one CR before it is removed too. A line that reaches
        ``max_line_length`` octets without ending raises ``LineTooLong`` once, and its
        remainder is dropped as it arrives instead of being buffered. Between
        ``start_data()`` and the end marker the buffer holds message content, so asking
        for a line then raises ``RuntimeError``.
        """
        cdef const unsigned char* p
        cdef const unsigned char* hit
        cdef Py_ssize_t size
        cdef Py_ssize_t lf
        cdef Py_ssize_t stop

        if self._in_data:
            raise RuntimeError("next_line() called during DATA")
        while self._discarding:
            p = self._buf + self._start
            size = self._end - self._start
            hit = NULL
            if size > 0:
                hit = <const unsigned char*>memchr(p, _LF, <size_t>size)
            if hit == NULL:
                self._consume(size)
                return None
            self._consume(hit - p + 1)
            self._discarding = False

        p = self._buf + self._start
        size = self._end - self._start
        lf = -1
        if size > self._scan_from:
            hit = <const unsigned char*>memchr(
                p + self._scan_from, _LF, <size_t>(size - self._scan_from)
            )
            if hit != NULL:
                lf = hit - p

        if lf < 0 or lf >= self._max_line:
            if size < self._max_line:
                self._scan_from = size
                return None
            # Over the limit: drop what we hold and skip the rest of the line.
            if lf >= 0:
                self._consume(lf + 1)
            else:
                self._consume(size)
                self._discarding = True
            self._scan_from = 0
            raise LineTooLong(self._max_line_obj)

        stop = lf - 1 if lf > 0 and p[lf - 1] == _CR else lf
        line = PyBytes_FromStringAndSize(<char*>p, stop)
        self._consume(lf + 1)
        self._scan_from = 0
        return line

    def buffered(self):
        """Return how many received octets are waiting to be read."""
        return self._end - self._start

    def discard_buffered(self):
        """Drop every buffered octet (STARTTLS must not run plaintext pipelined after it)."""
        cdef Py_ssize_t count = self._end - self._start
        self._consume(count)
        self._scan_from = 0
        self._discarding = False
        return count

    # DATA mode

    def start_data(self, max_size, size_hint=0):
        """Switch to reading message content, keeping at most ``max_size`` octets of it.

        ``size_hint`` is the size the client declared (RFC 1870 ``SIZE=``), 0 if none: room
        for that much content, up to ``max_size``, is then made once instead of grown.
        """
        if max_size < 0:
            raise ValueError(f"max_size must not be negative, got {max_size}")
        if size_hint < 0:
            raise ValueError(f"size_hint must not be negative, got {size_hint}")
        self._data_limit = _clamp(max_size)
        self._size_hint = min(_clamp(size_hint), self._data_limit)
        self._in_data = True
        self._body_len = 0
        self._data_size = 0
        self._data_overflow = False
        self._data_bare_eol = False

        # The start of DATA counts as a line start (RFC 5321 §4.1.1.4): a virtual CRLF of
        # context makes an immediate "." line the end marker and a leading dot stuffed.
        if self._start < _CONTEXT:
            self._reserve(_CONTEXT)
            memmove(self._buf + _CONTEXT, self._buf, <size_t>self._end)
            self._start += _CONTEXT
            self._end += _CONTEXT
        self._start -= _CONTEXT
        self._buf[self._start] = _CR
        self._buf[self._start + 1] = _LF
        self._scan_from = 0

    def read_data(self):
        """Consume buffered DATA content; return True once the end marker was consumed.

        The buffer always starts with ``_CONTEXT`` octets that were already accounted for
        (at first the virtual CRLF), so a marker or ``CRLF .`` that began in an earlier
        chunk is still matched. When no marker is found, everything but the last
        ``_HOLD_BACK`` octets is unstuffed and kept, and those octets wait for more.
        """
        cdef _Scan res
        cdef const unsigned char* p = self._buf + self._start
        cdef Py_ssize_t size = self._end - self._start
        cdef Py_ssize_t room = self._data_limit - self._data_size
        cdef bint copied = False
        cdef bint check_bare = not self._data_bare_eol

        if not self._in_data:
            raise RuntimeError("read_data() called outside DATA")
        if size < _MARKER_LEN:
            return False  # neither a marker nor anything past the hold-back yet

        # Copy while scanning when the content surely fits; near the limit, count first.
        if self._data_overflow:
            _scan_data(p, size, NULL, check_bare, &res)
        elif size - _CONTEXT <= room:
            self._reserve_body(size - _CONTEXT)
            _scan_data(p, size, self._body_end(), check_bare, &res)
            copied = True
        else:
            _scan_data(p, size, NULL, check_bare, &res)
            if res.content <= room and (res.marker or res.cut > _CONTEXT):
                self._reserve_body(res.content)
                _scan_data(p, size, self._body_end(), check_bare, &res)
                copied = True
        if not res.marker and res.cut <= _CONTEXT:
            return False

        self._data_size += res.content
        if res.bare:
            self._data_bare_eol = True
        if copied:
            self._body_len += res.content
        if not self._data_overflow and self._data_size > self._data_limit:
            self._data_overflow = True
            self._drop_body()

        if res.marker:
            self._consume(res.cut - 2 + _MARKER_LEN)
            self._in_data = False
            return True
        self._consume(res.cut - _CONTEXT)
        return False

    @property
    def in_data(self):
        """True between ``start_data()`` and the end marker."""
        return self._in_data

    @property
    def data_size(self):
        """Octets of unstuffed content counted so far, including any past the limit."""
        return self._data_size

    @property
    def data_overflow(self):
        """True once the content outgrew ``max_size``; it is then counted, not kept."""
        return self._data_overflow

    @property
    def data_bare_line_endings(self):
        """True if the content holds a CR or LF that is not part of a CRLF pair."""
        return self._data_bare_eol

    def take_data(self):
        """Return the unstuffed content read so far (empty after an overflow) and forget it."""
        cdef object body
        if self._body_len == 0:
            if self._body_cap > _KEEP_CAPACITY:
                self._drop_body()
            return _EMPTY

        # The content was written into this very object: trim it to size and hand it over.
        # Shrinking is a realloc that gives back the tail in place, so no copy exists.
        self._resize_body(self._body_len)
        body = <object>self._body
        self._drop_body()
        return body

    # Internals

    cdef int _append(self, const unsigned char* data, Py_ssize_t size) except -1:
        if size == 0:
            return 0
        self._reserve(size)
        memcpy(self._buf + self._end, data, <size_t>size)
        self._end += size
        return 0

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        """Make room for ``extra`` octets after ``_end``, sliding or growing the buffer."""
        cdef Py_ssize_t used = self._end - self._start
        cdef Py_ssize_t need
        cdef Py_ssize_t cap
        cdef unsigned char* fresh

        if extra <= self._cap - self._end:
            return 0
        if extra > PY_SSIZE_T_MAX // 2 - used:
            raise MemoryError()
        need = used + extra

        # Sliding is cheap while the buffer stays at most half full: each move of the
        # unread octets frees at least as much room as it copies.
        if need <= self._cap // 2:
            memmove(self._buf, self._buf + self._start, <size_t>used)
        else:
            cap = max(need * 2, <Py_ssize_t>_MIN_CAPACITY)
            fresh = <unsigned char*>PyMem_Malloc(<size_t>cap)
            if fresh == NULL:
                raise MemoryError()
            if used:
                memcpy(fresh, self._buf + self._start, <size_t>used)
            PyMem_Free(self._buf)
            self._buf = fresh
            self._cap = cap
        self._start = 0
        self._end = used
        return 0

    cdef inline void _consume(self, Py_ssize_t count) noexcept:
        """Forget the first ``count`` buffered octets; give back a large idle buffer."""
        self._start += count
        if self._start != self._end:
            return
        self._start = 0
        self._end = 0
        if self._cap > _KEEP_CAPACITY:
            PyMem_Free(self._buf)
            self._buf = NULL
            self._cap = 0

    cdef inline unsigned char* _body_end(self) noexcept:
        """Return where the next content octet goes, or NULL while there is no body object.

        read_data() only reserves room for content it will copy, so NULL comes with a scan
        that copies nothing.
        """
        if self._body == NULL:
            return NULL
        return <unsigned char*>_bytes_data(self._body) + self._body_len

    cdef int _reserve_body(self, Py_ssize_t extra) except -1:
        """Make room for ``extra`` more content octets in the body object."""
        cdef Py_ssize_t need
        cdef Py_ssize_t cap = self._body_cap
        cdef object fresh

        if extra <= cap - self._body_len:
            return 0
        if extra > PY_SSIZE_T_MAX // 2 - self._body_len:
            raise MemoryError()
        need = self._body_len + extra

        # Doubling is cheapest while bodies are small. Past _GROW_SLOWLY_FROM, a quarter at a
        # time bounds the room made but never used to 25% of the content, and each realloc
        # that has to copy holds the old block and the new one together: that sum, not the
        # final size, is what a large message costs at its peak.
        if self._size_hint > need:
            cap = self._size_hint
        elif cap < _GROW_SLOWLY_FROM:
            cap *= 2
        else:
            cap += cap // 4
        cap = max(cap, need, <Py_ssize_t>_MIN_CAPACITY)
        cap = min(cap, max(need, self._data_limit))  # content past the limit is not kept
        self._size_hint = 0

        if _MAP_BODIES and _MAP_FROM <= cap < _MAPPED_ROOM and self._map_body():
            return 0
        if self._body == NULL:
            fresh = PyBytes_FromStringAndSize(NULL, cap)
            Py_INCREF(fresh)
            self._body = <PyObject*>fresh
            self._body_cap = cap
            return 0
        self._resize_body(cap)
        return 0

    cdef bint _map_body(self) except -1:
        """Move the body into ``_MAPPED_ROOM`` octets of room; False if they are not to be had.

        That much is above glibc's largest mmap threshold (32 MiB on 64-bit), so the block
        is always mapped: room never written costs no memory, it grows and shrinks in place
        (mremap), and it goes back to the system once freed. Below that threshold, which
        rises to the size of any mapped block freed, a body would grow on the heap: copied
        on realloc, and resident after it is freed (w3 in BENCHMARKS.md).
        """
        cdef object fresh
        try:
            fresh = PyBytes_FromStringAndSize(NULL, _MAPPED_ROOM)
        except MemoryError:
            return False  # no address space or commit to spare: grow as content comes
        if self._body_len:
            memcpy(PyBytes_AS_STRING(fresh), _bytes_data(self._body), <size_t>self._body_len)
        Py_CLEAR(self._body)
        Py_INCREF(fresh)
        self._body = <PyObject*>fresh
        self._body_cap = _MAPPED_ROOM
        return True

    cdef int _resize_body(self, Py_ssize_t size) except -1:
        """Resize the body object in place when the allocator can (realloc)."""
        try:
            _PyBytes_Resize(&self._body, size)
        except BaseException:
            # CPython frees the object when this fails, and the content read so far with it:
            # count the rest without keeping it, so that no caller is ever handed a part.
            self._body = NULL
            self._body_len = 0
            self._body_cap = 0
            self._data_overflow = True
            raise
        self._body_cap = size
        return 0

    cdef void _drop_body(self) noexcept:
        Py_CLEAR(self._body)
        self._body_len = 0
        self._body_cap = 0

    cdef void _free_buffers(self) noexcept:
        PyMem_Free(self._buf)
        self._buf = NULL
        self._start = 0
        self._end = 0
        self._cap = 0
        self._drop_body()


def split_command(line):
    """Split a command line into its upper-cased verb and its argument, spaces trimmed.

    ``b"mail FROM:<a@b>  "`` gives ``(b"MAIL", b"FROM:<a@b>")``. Only spaces separate
    (RFC 5321 §4.1.1); a line with no space is all verb.
    """
    cdef Py_buffer view
    if PyBytes_CheckExact(line):
        return _split(<const unsigned char*>PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
    _open_view(line, &view)
    try:
        return _split(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef tuple _split(const unsigned char* p, Py_ssize_t size):
    cdef Py_ssize_t first = 0
    cdef Py_ssize_t stop = size
    cdef Py_ssize_t verb_end
    cdef Py_ssize_t arg_start
    cdef Py_ssize_t i
    cdef const unsigned char* space
    cdef unsigned char octet
    cdef unsigned char* out

    while first < stop and p[first] == _SP:
        first += 1
    while stop > first and p[stop - 1] == _SP:
        stop -= 1

    space = NULL
    if stop > first:
        space = <const unsigned char*>memchr(p + first, _SP, <size_t>(stop - first))
    if space == NULL:
        verb_end = stop
        arg = _EMPTY
    else:
        verb_end = space - p
        arg_start = verb_end + 1
        while p[arg_start] == _SP:  # stops before stop: p[stop - 1] is no space
            arg_start += 1
        arg = PyBytes_FromStringAndSize(<char*>p + arg_start, stop - arg_start)

    # ASCII-only upper-casing, like bytes.upper().
    verb = PyBytes_FromStringAndSize(NULL, verb_end - first)
    out = <unsigned char*>PyBytes_AS_STRING(verb)
    for i in range(verb_end - first):
        octet = p[first + i]
        out[i] = octet - 32 if 0x61 <= octet <= 0x7A else octet
    return verb, arg


def plain_path(argument, bytes keyword not None):
    """Recognise the everyday MAIL/RCPT argument: ``KEYWORD:<local@domain>`` in plain ASCII.

    ``keyword`` (``bytes``, such as ``b"FROM:"``) is matched in any case. Returns the address
    and the index just past ``>`` when the path is a dot-atom local part, ``@`` and a domain
    of letter-digit-hyphen labels, followed by the end or a space (the parameters). Returns
    None for anything else (quoted local parts, address literals, source routes, ``<>``,
    UTF-8, any flaw): the full grammar in ``fastsmtp._commands`` decides those.
    """
    cdef Py_buffer view
    cdef const unsigned char* k = <const unsigned char*>PyBytes_AS_STRING(keyword)
    cdef Py_ssize_t k_size = PyBytes_GET_SIZE(keyword)
    if PyBytes_CheckExact(argument):
        return _plain_path(
            <const unsigned char*>PyBytes_AS_STRING(argument), PyBytes_GET_SIZE(argument),
            k, k_size,
        )
    _open_view(argument, &view)
    try:
        return _plain_path(<const unsigned char*>view.buf, view.len, k, k_size)
    finally:
        PyBuffer_Release(&view)


cdef object _plain_path(
    const unsigned char* p, Py_ssize_t size, const unsigned char* k, Py_ssize_t k_size
):
    cdef Py_ssize_t i
    cdef Py_ssize_t start
    cdef Py_ssize_t domain
    cdef unsigned char octet
    cdef unsigned char expected

    if size < k_size:
        return None
    for i in range(k_size):
        # ASCII letters in either case, like the Python twin's re.IGNORECASE on bytes.
        octet = p[i]
        expected = k[i]
        if 0x61 <= octet <= 0x7A:
            octet -= 32
        if 0x61 <= expected <= 0x7A:
            expected -= 32
        if octet != expected:
            return None
    i = k_size
    while i < size and p[i] == _SP:
        i += 1
    if i == size or p[i] != _LESS:
        return None
    i += 1
    start = i

    # The local part: atoms of atext; then "@" and the domain: labels (see _dotted).
    i = _dotted(p, i, size, _ATEXT)
    if i < 0 or i == size or p[i] != _AT:
        return None
    i += 1
    domain = i
    i = _dotted(p, i, size, _LDH)
    if i < 0:
        return None
    if i - domain > _MAX_DOMAIN or i == size or p[i] != _GREATER:
        return None
    if i + 1 < size and p[i + 1] != _SP:
        return None
    return PyUnicode_DecodeASCII(<const char*>p + start, i - start, NULL), i + 1


cdef Py_ssize_t _dotted(
    const unsigned char* p, Py_ssize_t i, Py_ssize_t size, unsigned char kind
) noexcept:
    """Return the end of non-empty runs of ``kind`` octets joined by single dots, from ``i``.

    For ``_LDH`` the runs are domain labels: at most _MAX_LABEL octets, no hyphen at either
    end. Returns -1 if the runs are malformed.
    """
    cdef Py_ssize_t part
    while True:
        part = i
        while i < size and _ADDRESS[p[i]] & kind:
            i += 1
        if i == part:
            return -1
        if kind == _LDH and (
            i - part > _MAX_LABEL or p[part] == _HYPHEN or p[i - 1] == _HYPHEN
        ):
            return -1
        if i == size or p[i] != _DOT:
            return i
        i += 1


def classify_command(line):
    """Return ``CTRL`` and/or ``EIGHT_BIT`` bits for what a command line holds besides text.

    Horizontal tab does not count as a control character.
    """
    cdef Py_buffer view
    if PyBytes_CheckExact(line):
        return _classify(<const unsigned char*>PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
    _open_view(line, &view)
    try:
        return _classify(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef int _classify(const unsigned char* p, Py_ssize_t size) noexcept:
    cdef unsigned char flags = 0
    cdef Py_ssize_t i
    for i in range(size):
        flags |= _CLASS[p[i]]
        if flags == _CTRL | _EIGHT_BIT:
            break
    return flags
