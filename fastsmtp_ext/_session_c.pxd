# Declarations that compile src/fastsmtp/_session.py, unchanged, into fastsmtp._session_c.
#
# The compiled twin of the session core is the pure one's own source: CMakeLists.txt copies
# _session.py beside this file as _session_c.py, and Cython reads the two together. So there
# is one dialogue to maintain, and the twins cannot drift apart. What this file adds is only
# what makes the compiled one fast: SessionCore becomes an extension type, its state C fields
# instead of a dictionary, and the steps of a command C calls instead of Python ones.
#
# Keep every attribute that _session.py sets here, or the compiled twin raises AttributeError
# (tests/test_session.py runs both twins). Methods left out stay ordinary Python methods.

cimport cython


@cython.final
cdef class SessionCore:
    cdef public object config, session, state, envelope_from, mail_arguments, pending
    cdef public object close_reason, on_refuse
    cdef public list recipients
    cdef public bint tls
    cdef public Py_ssize_t auth_failures, discarded_after_starttls, errors, junk_commands
    cdef public Py_ssize_t data_phases
    cdef public bint _starttls, _tls_pending, _tls_required, _stop_when_idle
    cdef public object _auth, _wire, _reader, _split, _classify, _plain_path
    cdef public list _out
    cdef public bytes _verb

    # Called by the transport for every command: C entry points, still callable from Python.
    cpdef object step(self)
    cpdef bytes take_output(self)
    cpdef object feed(self, data)

    # Called only from within the session: plain C calls.
    cdef object _on_line(self, line)
    cdef object _on_data_end(self)
    cdef object _refuse(self, reply)
    cdef object _protocol_error(self, reply)
    cdef object _count_error(self)
    cdef object _count_junk(self)
    cdef object _greeted(self, argument, bint esmtp)
    cdef object _open_transaction(self, arguments)
    cdef object _end_transaction(self)
