# kernelbox file helper: every file operation the server performs inside a sandbox.
#
# Run by the server as `docker exec -u 1000:1000 -w / /usr/bin/python3 -I -S -c <this> OP ROOT ARGS`:
# the sandbox user's rights, a root-owned interpreter and standard library, no PATH lookup, no
# site or user packages, no PYTHON* variables. It has no more power than the sandbox's own code,
# and the server trusts nothing it prints.
#
# Paths are resolved from a directory fd of ROOT (the workspace) one component at a time, each
# opened with O_NOFOLLOW relative to the fd of its parent. Symlinks are read and resolved here,
# never by the kernel: `..` pops this walk's own stack (never above ROOT), an absolute target is
# followed only when it names ROOT or lies under it, anything else is refused as outside. Every
# operation then works on the fds it holds, so a link swapped in after the walk cannot redirect
# it (the final open is O_NOFOLLOW too; a name that turned into a link is walked again).
#
# Output: stdout starts with one JSON line, {"ok": {...}} or {"error": KIND, "message": TEXT}
# (with "entry": NAME when an archive entry was refused, "side": "destination" when a copy's or a
# move's destination was);
# `read` and `tar` follow a success line with their payload. Exit status 0 means done; after a
# payload started, failures go to stderr and the status is 1.
#
# Ops:
#   read  ROOT PATH MAX   {"ok": {"size", "path"}}, then the file's SIZE bytes (none if SIZE > MAX)
#   write ROOT PATH SIZE  SIZE bytes from stdin into PATH (parents created), replacing it atomically
#   list  ROOT PATH       {"ok": {"path", "entries": [{"name", "kind", "size", "modified"}]}}
#   delete ROOT PATH      removes a file, a link (never its target) or a tree
#   untar ROOT PATH       extracts the tar on stdin under directory PATH (created when missing),
#                         entry by entry, each walked from ROOT like any path (so a link planted
#                         earlier, or made by an earlier entry, cannot lead it out). Files and
#                         symlinks replace what has their name (never written through it); a
#                         symlink entry is made only when its text stays under ROOT; a hard link
#                         only to an existing non-directory reached by the walk; modes lose
#                         setuid/setgid/sticky, directories keep the owner's rwx.
#   tar   ROOT PATH MODE  a tar of PATH: MODE `tree` names entries by PATH's last component,
#                         `dir` names a directory's entries `./...`
#   stat  ROOT PATH       {"ok": {"exists": false}} or {"ok": {"exists": true, "kind", "size", "mode",
#                         "modified"}} of the final component itself (a link is not followed, but
#                         one leading outside ROOT is refused)
#   mkdir ROOT PATH       creates directory PATH and its parents: {"ok": {"created": bool}}
#   copy  ROOT PATH TARGET OVERWRITE  copies a file or a tree (links inside copied as links) to
#                         TARGET via a temporary name; an existing TARGET is refused (`exists`)
#                         unless OVERWRITE is 1, and so is one the sandbox user may not write
#   move  ROOT PATH TARGET OVERWRITE  renames PATH (itself, never a link's target) to TARGET
import os
import stat
import sys
import json

ROOT = b""
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_LOOK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_LINKS = 40
MAX_ATTEMPTS = 8
CHUNK = 1 << 20


class Refused(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.entry = None
        self.side = None


class Changed(Exception):
    """A name turned into a symlink between the walk and its use: walk again."""


def text(raw):
    return raw.decode("utf-8", "replace")


def split(path):
    return [part for part in path.split(b"/") if part and part != b"."]


def refuse_os(error, what):
    if isinstance(error, FileNotFoundError):
        return Refused("not_found", "no such file or directory: %s" % text(what))
    if isinstance(error, PermissionError):
        return Refused("denied", "permission denied: %s" % text(what))
    if isinstance(error, IsADirectoryError):
        return Refused("is_dir", "%s is a directory" % text(what))
    if isinstance(error, NotADirectoryError):
        return Refused("not_dir", "%s is not a directory" % text(what))
    return Refused("io", "%s: %s" % (text(what), os.strerror(error.errno or 0)))


class Place:
    """A directory reached from ROOT: the fds of the directories walked, and their names."""

    def __init__(self):
        self.fds = [os.open(ROOT, O_DIR)]
        self.names = []

    @property
    def fd(self):
        return self.fds[-1]

    def up(self):
        if len(self.fds) == 1:
            raise Refused("outside", "the path leads outside the workspace")
        os.close(self.fds.pop())
        self.names.pop()

    def reset(self):
        while len(self.fds) > 1:
            os.close(self.fds.pop())
        self.names = []

    def down(self, fd, name):
        self.fds.append(fd)
        self.names.append(name)

    def relative(self, name=None):
        return b"/".join(self.names + ([name] if name else []))

    def path(self, name=None):
        relative = self.relative(name)
        return text(ROOT + (b"/" + relative if relative else b""))

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def resolve(path, follow_last=True, make_dirs=False):
    """Walks PATH (relative to ROOT). Returns (place, name): the directory holding the final
    component and its name, or (place, None) when PATH is that directory itself. The final
    component need not exist; with follow_last it is not a symlink when returned."""
    place = Place()
    pending = list(reversed(split(path)))
    links = 0
    made = 0
    try:
        while pending:
            name = pending.pop()
            if name == b"..":
                place.up()
                continue
            last = not pending
            if last and not follow_last:
                return place, name
            try:
                fd = os.open(name, O_LOOK, dir_fd=place.fd)
            except FileNotFoundError:
                if last:
                    return place, name
                if not make_dirs:
                    raise Refused("not_found", "no such file or directory: %s" % place.path(name))
                made += 1
                if made > 1000:
                    raise Refused("io", "cannot create the directories of %s" % text(path))
                try:
                    os.mkdir(name, 0o755, dir_fd=place.fd)
                except FileExistsError:
                    pass
                pending.append(name)
                continue
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                links += 1
                if links > MAX_LINKS:
                    os.close(fd)
                    raise Refused("invalid", "too many levels of symbolic links in %s" % text(path))
                # The link read is the one just opened, whatever has its name by now.
                try:
                    target = os.readlink(b"", dir_fd=fd)
                finally:
                    os.close(fd)
                if target.startswith(b"/"):
                    if target != ROOT and not target.startswith(ROOT + b"/"):
                        raise Refused("outside", "%s is a link leading outside the workspace" % place.path(name))
                    target = target[len(ROOT):]
                    place.reset()
                pending.extend(reversed(split(target)))
                continue
            if last:
                os.close(fd)
                return place, name
            if not stat.S_ISDIR(mode):
                os.close(fd)
                raise Refused("not_dir", "%s is not a directory" % place.path(name))
            place.down(fd, name)
        return place, None
    except OSError as error:
        place.close()
        raise refuse_os(error, path)
    except BaseException:
        place.close()
        raise


def open_final(place, name, flags, what):
    """Opens the final component (never through a link), or the place itself."""
    try:
        if name is None:
            return os.open(b".", flags & ~os.O_NOFOLLOW, dir_fd=place.fd)
        return os.open(name, flags, dir_fd=place.fd)
    except OSError as error:
        if error.errno == 40:  # ELOOP: it became a symlink after the walk
            raise Changed()
        raise refuse_os(error, what)


def retrying(attempt):
    for _ in range(MAX_ATTEMPTS):
        try:
            return attempt()
        except Changed:
            continue
    raise Refused("invalid", "the path kept changing while it was used")


ANSWERED = False


def answer(document):
    """Writes the one JSON line; once a success line went out, a payload may follow it."""
    global ANSWERED
    ANSWERED = True
    out = sys.stdout.buffer
    out.write(json.dumps(document, separators=(",", ":")).encode() + b"\n")
    out.flush()


def send_exactly(fd, size):
    """Writes SIZE bytes of fd to stdout; fails when the file ends sooner."""
    out = sys.stdout.buffer
    out.flush()
    left = size
    use_sendfile = True
    while left > 0:
        if use_sendfile:
            try:
                sent = os.sendfile(1, fd, None, min(left, CHUNK))
            except OSError:
                use_sendfile = False
                continue
        else:
            block = os.read(fd, min(left, CHUNK))
            sent = len(block)
            out.write(block)
        if sent == 0:
            raise Refused("io", "the file shrank while it was read")
        left -= sent
    out.flush()


def op_read(path, maximum):
    maximum = int(maximum)

    def attempt():
        place, name = resolve(path)
        try:
            fd = open_final(place, name, O_READ, path)
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                os.close(fd)
                raise Refused("is_dir", "%s is a directory" % text(path))
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise Refused("invalid", "%s is not a regular file" % text(path))
            return fd, info.st_size, place.path(name)
        finally:
            place.close()

    fd, size, real = retrying(attempt)
    answer({"ok": {"size": size, "path": real}})
    if size <= maximum:
        send_exactly(fd, size)


def temporary_name():
    return b".kbx-" + os.urandom(8).hex().encode() + b".part"


def replace_entry(place, name, fill, mode, mtime=None):
    """Creates a file with FILL(fd) under a temporary name in place, then renames it over NAME,
    so NAME is replaced atomically and never opened through a link."""
    temporary = temporary_name()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=place.fd)
    try:
        try:
            fill(fd)
            os.fchmod(fd, mode)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=place.fd, dst_dir_fd=place.fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=place.fd)
        except OSError:
            pass
        raise


def copy_in(source, fd, size):
    left = size
    while left > 0:
        block = source.read(min(left, CHUNK))
        if not block:
            raise Refused("interrupted", "the input ended before its announced size")
        view = memoryview(block)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        left -= len(block)


def existing(place, name):
    try:
        return os.stat(name, dir_fd=place.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def op_write(path, size):
    size = int(size)
    place, name = retrying(lambda: resolve(path, make_dirs=True))
    try:
        if name is None:
            raise Refused("is_dir", "%s is a directory" % text(path))
        info = existing(place, name)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise Refused("is_dir", "%s is a directory" % text(path))
        if info is not None and not os.access(name, os.W_OK, dir_fd=place.fd, follow_symlinks=False):
            raise Refused("denied", "permission denied: %s is not writable by the sandbox user" % place.path(name))
        try:
            replace_entry(place, name, lambda fd: copy_in(sys.stdin.buffer, fd, size), 0o644)
        except OSError as error:
            raise refuse_os(error, path)
        answer({"ok": {"path": place.path(name), "size": size}})
    finally:
        place.close()


def kind_of(mode):
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def open_dir(path):
    def attempt():
        place, name = resolve(path)
        try:
            fd = open_final(place, name, O_DIR, path)
            return fd, place.path(name), place.relative(name)
        finally:
            place.close()

    return retrying(attempt)


def op_list(path):
    fd, real, _ = open_dir(path)
    try:
        entries = []
        for entry in sorted(os.listdir(fd), key=os.fsencode):
            raw = os.fsencode(entry)
            try:
                info = os.stat(raw, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            entries.append({
                "name": text(raw),
                "kind": kind_of(info.st_mode),
                "size": info.st_size,
                "modified": info.st_mtime,
            })
    finally:
        os.close(fd)
    answer({"ok": {"path": real, "entries": entries}})


def remove_tree(parent, name):
    """Removes NAME under the directory fd PARENT: a tree by fds, depth first, never following
    a link (a link is removed, its target stays)."""
    stack = [[parent, name, None]]
    while stack:
        top = stack[-1]
        dir_fd, entry, fd = top
        if fd is None:
            info = existing_at(dir_fd, entry)
            if info is None:
                stack.pop()
                continue
            if not stat.S_ISDIR(info.st_mode):
                try:
                    os.unlink(entry, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                stack.pop()
                continue
            try:
                fd = os.open(entry, O_DIR, dir_fd=dir_fd)
            except OSError as error:
                if error.errno in (40, 20):  # swapped for a link or a file: look again
                    continue
                raise
            top[2] = fd
            for child in os.listdir(fd):
                stack.append([fd, os.fsencode(child), None])
            continue
        os.close(fd)
        os.rmdir(entry, dir_fd=dir_fd)
        stack.pop()


def existing_at(dir_fd, name):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def op_delete(path):
    place, name = retrying(lambda: resolve(path, follow_last=False))
    try:
        if name is None:
            raise Refused("invalid", "the workspace itself cannot be deleted")
        if existing(place, name) is None:
            raise Refused("not_found", "no such file or directory: %s" % text(path))
        try:
            remove_tree(place.fd, name)
        except OSError as error:
            raise refuse_os(error, path)
        answer({"ok": {"path": place.path(name)}})
    finally:
        place.close()


def beneath(relative_dir, target):
    """Whether a symlink in RELATIVE_DIR (relative to ROOT) pointing at TARGET stays under ROOT
    when read as text (the walk refuses anything else when it is followed anyway)."""
    if target.startswith(b"/"):
        return target == ROOT or target.startswith(ROOT + b"/")
    depth = len(split(relative_dir))
    for part in split(target):
        if part == b"..":
            depth -= 1
            if depth < 0:
                return False
        else:
            depth += 1
    return True


def entry_parts(member):
    parts = split(os.fsencode(member.name))
    if member.name.startswith("/") or b".." in parts:
        raise Refused("invalid", "entry %s leaves the target directory" % member.name)
    return parts


def op_untar(path):
    import tarfile

    def target():
        place, name = resolve(path, make_dirs=True)
        try:
            if name is not None:
                try:
                    os.mkdir(name, 0o755, dir_fd=place.fd)
                except FileExistsError:
                    pass
            fd = open_final(place, name, O_DIR, path)
            os.close(fd)
            return place.relative(name)
        finally:
            place.close()

    try:
        base = retrying(target)
    except Refused as refused:
        if refused.kind == "not_dir":
            refused.message = "%s is not a directory" % text(path)
        raise
    entries = 0
    archive = tarfile.open(fileobj=sys.stdin.buffer, mode="r|", errorlevel=2)
    for member in archive:
        parts = entry_parts(member)
        if not parts:
            continue
        relative = b"/".join(([base] if base else []) + parts)
        entries += 1
        try:
            try:
                extract(archive, member, base, relative)
            except OSError as error:
                raise refuse_os(error, os.fsencode(member.name))
        except Refused as refused:
            refused.entry = member.name
            raise
    answer({"ok": {"path": text(ROOT + (b"/" + base if base else b"")), "entries": entries}})


def extract(archive, member, base, relative):
    mode = member.mode & 0o777
    if member.isdir():
        def make():
            place, name = resolve(relative, make_dirs=True)
            try:
                if name is not None:
                    try:
                        os.mkdir(name, 0o755, dir_fd=place.fd)
                    except FileExistsError:
                        pass
                fd = open_final(place, name, O_DIR, relative)
                try:
                    # The owner keeps rwx, so later entries can go in (the server is not root).
                    os.fchmod(fd, mode | 0o700)
                    os.utime(fd, (member.mtime, member.mtime))
                finally:
                    os.close(fd)
            finally:
                place.close()
        return retrying(make)
    place, name = retrying(lambda: resolve(relative, follow_last=False, make_dirs=True))
    try:
        if name is None:
            raise Refused("invalid", "entry %s names a directory" % member.name)
        info = existing(place, name)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise Refused("is_dir", "entry %s would replace a directory" % member.name)
        if member.isreg():
            source = archive.extractfile(member)
            replace_entry(place, name, lambda fd: copy_in(source, fd, member.size), mode, member.mtime)
        elif member.issym():
            target = os.fsencode(member.linkname)
            if not target or not beneath(place.relative(), target):
                raise Refused("invalid", "link %s points outside the target directory" % member.name)
            temporary = temporary_name()
            os.symlink(target, temporary, dir_fd=place.fd)
            try:
                os.rename(temporary, name, src_dir_fd=place.fd, dst_dir_fd=place.fd)
            except BaseException:
                os.unlink(temporary, dir_fd=place.fd)
                raise
        elif member.islnk():
            link_hard(member, base, place, name)
        else:
            raise Refused("invalid", "entry %s has an unsupported type" % member.name)
    finally:
        place.close()


def link_hard(member, base, place, name):
    """A hard link to an earlier entry: its source is walked like any path, so it must lie under
    the workspace, and the link is made to that very entry (a link there is not followed)."""
    parts = split(os.fsencode(member.linkname))
    if member.linkname.startswith("/") or b".." in parts or not parts:
        raise Refused("invalid", "hard link %s points outside the target directory" % member.name)
    source_path = b"/".join(([base] if base else []) + parts)
    source, source_name = resolve(source_path, follow_last=False)
    try:
        info = existing(source, source_name) if source_name else None
        if info is None or stat.S_ISDIR(info.st_mode):
            raise Refused("invalid", "hard link %s has no file to point at" % member.name)
        temporary = temporary_name()
        os.link(source_name, temporary, src_dir_fd=source.fd, dst_dir_fd=place.fd, follow_symlinks=False)
        try:
            os.rename(temporary, name, src_dir_fd=place.fd, dst_dir_fd=place.fd)
        except BaseException:
            os.unlink(temporary, dir_fd=place.fd)
            raise
    finally:
        source.close()


class Exactly:
    """Reads SIZE bytes of fd, padded with zeros if the file shrinks meanwhile (the tar header
    already announced SIZE)."""

    def __init__(self, fd, size):
        self.fd = fd
        self.left = size

    def read(self, n=-1):
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        block = os.read(self.fd, n) or b"\0" * n
        self.left -= len(block)
        return block


def op_tar(path, mode):
    import tarfile

    def attempt():
        place, name = resolve(path)
        try:
            fd = open_final(place, name, O_READ, path)
            return fd, place.path(name), place.relative(name)
        finally:
            place.close()

    fd, real, relative = retrying(attempt)
    info = os.fstat(fd)
    if mode == "dir":
        if not stat.S_ISDIR(info.st_mode):
            os.close(fd)
            raise Refused("not_dir", "%s is not a directory" % text(path))
        prefix = b"."
    else:
        prefix = (ROOT + b"/" + relative).rstrip(b"/").rsplit(b"/", 1)[-1]
    if not stat.S_ISDIR(info.st_mode) and not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise Refused("invalid", "%s is neither a file nor a directory" % text(path))
    answer({"ok": {"path": real}})
    sys.stdout.buffer.flush()
    archive = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT)

    def header(arcname, info, kind):
        entry = tarfile.TarInfo(os.fsdecode(arcname))
        entry.type = kind
        entry.mode = info.st_mode & 0o7777
        entry.uid = info.st_uid
        entry.gid = info.st_gid
        entry.mtime = int(info.st_mtime)
        return entry

    def add_file(file_fd, arcname, info):
        entry = header(arcname, info, tarfile.REGTYPE)
        entry.size = info.st_size
        archive.addfile(entry, Exactly(file_fd, info.st_size))

    if stat.S_ISREG(info.st_mode):
        try:
            add_file(fd, prefix, info)
        finally:
            os.close(fd)
        archive.close()
        return
    archive.addfile(header(prefix + b"/", info, tarfile.DIRTYPE))
    # Depth first; one open fd per level, so a wide tree costs no more fds than a deep one.
    stack = [(fd, prefix, iter(sorted(os.listdir(fd), key=os.fsencode)))]
    while stack:
        dir_fd, arc, names = stack[-1]
        entry = next(names, None)
        if entry is None:
            os.close(dir_fd)
            stack.pop()
            continue
        raw = os.fsencode(entry)
        arcname = arc + b"/" + raw
        info = existing_at(dir_fd, raw)
        if info is None:
            continue
        if stat.S_ISLNK(info.st_mode):
            link = header(arcname, info, tarfile.SYMTYPE)
            link.linkname = os.fsdecode(os.readlink(raw, dir_fd=dir_fd))
            archive.addfile(link)
        elif stat.S_ISDIR(info.st_mode):
            try:
                child = os.open(raw, O_DIR, dir_fd=dir_fd)
            except OSError:
                continue
            archive.addfile(header(arcname + b"/", os.fstat(child), tarfile.DIRTYPE))
            stack.append((child, arcname, iter(sorted(os.listdir(child), key=os.fsencode))))
        elif stat.S_ISREG(info.st_mode):
            try:
                file_fd = os.open(raw, O_READ, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                info = os.fstat(file_fd)
                if stat.S_ISREG(info.st_mode):
                    add_file(file_fd, arcname, info)
            finally:
                os.close(file_fd)
    archive.close()


def leads_outside(path):
    """Whether following PATH's final link would leave ROOT (a dangling link inside does not)."""
    try:
        place, _ = resolve(path)
        place.close()
    except Refused as refused:
        return refused.kind == "outside"
    return False


def op_stat(path):
    """The final component itself (a link is reported as a link, never followed, but one that
    leads outside ROOT is refused); a path that does not exist is {"exists": false}."""
    try:
        place, name = retrying(lambda: resolve(path, follow_last=False))
    except Refused as refused:
        if refused.kind in ("not_found", "not_dir"):
            answer({"ok": {"exists": False}})
            return
        raise
    try:
        if name is None:
            info = os.fstat(place.fd)
        else:
            info = existing(place, name)
        if info is None:
            answer({"ok": {"exists": False}})
            return
        if stat.S_ISLNK(info.st_mode) and leads_outside(path):
            raise Refused("outside", "%s is a link leading outside the workspace" % place.path(name))
        answer({"ok": {
            "exists": True,
            "kind": kind_of(info.st_mode),
            "size": info.st_size,
            "mode": stat.S_IMODE(info.st_mode),
            "modified": info.st_mtime,
        }})
    finally:
        place.close()


def op_mkdir(path):
    """Creates directory PATH and its missing parents; an existing directory is fine."""
    def attempt():
        place, name = resolve(path, make_dirs=True)
        try:
            if name is None:
                return False
            try:
                os.mkdir(name, 0o755, dir_fd=place.fd)
                return True
            except FileExistsError:
                pass
            info = existing(place, name)
            if info is None:
                raise Changed()
            if stat.S_ISLNK(info.st_mode):
                raise Changed()
            if not stat.S_ISDIR(info.st_mode):
                raise Refused("exists", "%s exists and is not a directory" % text(path))
            return False
        except OSError as error:
            raise refuse_os(error, path)
        finally:
            place.close()

    created = retrying(attempt)
    answer({"ok": {"created": created}})


def destination(path, overwrite):
    """The directory and name a copy or move goes to (parents created); the name itself is never
    followed. An existing entry is refused unless OVERWRITE, and so is one the sandbox user may not
    write. Returns (place, name, info of what is there or None)."""
    try:
        place, name = retrying(lambda: resolve(path, follow_last=False, make_dirs=True))
    except Refused as refused:
        refused.side = "destination"
        raise
    try:
        if name is None:
            raise Refused("exists", "the destination is the workspace itself")
        if not os.access(b".", os.W_OK | os.X_OK, dir_fd=place.fd):
            raise Refused("denied", "permission denied: %s is not writable by the sandbox user" % place.path())
        info = existing(place, name)
        if info is not None:
            if not overwrite:
                raise Refused("exists", "%s already exists" % text(path))
            if not os.access(name, os.W_OK, dir_fd=place.fd, follow_symlinks=False):
                raise Refused("denied", "permission denied: %s is not writable by the sandbox user" % place.path(name))
        return place, name, info
    except BaseException as error:
        if isinstance(error, Refused):
            error.side = "destination"
        place.close()
        raise


def refuse_nesting(source_info, place, what):
    """A directory cannot go into itself or below itself."""
    for fd in place.fds:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == (source_info.st_dev, source_info.st_ino):
            raise Refused("invalid", "cannot %s a directory into itself" % what)


def copy_bytes(source_fd, target_fd):
    while True:
        block = os.read(source_fd, CHUNK)
        if not block:
            return
        view = memoryview(block)
        while view:
            written = os.write(target_fd, view)
            view = view[written:]


def copy_file_at(source_fd, info, dir_fd, name):
    """A new file NAME in DIR_FD with the content and mode of the open SOURCE_FD."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        copy_bytes(source_fd, fd)
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o777)
        os.utime(fd, (info.st_atime, info.st_mtime))
    finally:
        os.close(fd)


def copy_tree_at(source_fd, dir_fd, name):
    """A copy of the open directory SOURCE_FD as NAME in DIR_FD, walked by fds, depth first (one
    pair of open fds per level): links are copied as links (never followed), files and
    directories with their modes; other kinds (fifos, sockets, devices) are left out. A
    directory gets its mode once its entries are in, so a read-only one still takes them."""
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    top = os.open(name, O_DIR, dir_fd=dir_fd)
    stack = [(source_fd, top, iter(sorted(os.listdir(source_fd), key=os.fsencode)), os.fstat(source_fd))]
    try:
        while stack:
            from_fd, to_fd, names, info = stack[-1]
            entry = next(names, None)
            if entry is None:
                stack.pop()
                try:
                    os.fchmod(to_fd, (stat.S_IMODE(info.st_mode) & 0o777) | 0o700)
                    os.utime(to_fd, (info.st_atime, info.st_mtime))
                finally:
                    os.close(to_fd)
                    if from_fd != source_fd:
                        os.close(from_fd)
                continue
            raw = os.fsencode(entry)
            info = existing_at(from_fd, raw)
            if info is None:
                continue
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(raw, dir_fd=from_fd), raw, dir_fd=to_fd)
            elif stat.S_ISDIR(info.st_mode):
                child = os.open(raw, O_DIR, dir_fd=from_fd)
                try:
                    os.mkdir(raw, 0o700, dir_fd=to_fd)
                    made = os.open(raw, O_DIR, dir_fd=to_fd)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, made, iter(sorted(os.listdir(child), key=os.fsencode)), os.fstat(child)))
            elif stat.S_ISREG(info.st_mode):
                file_fd = os.open(raw, O_READ, dir_fd=from_fd)
                try:
                    opened = os.fstat(file_fd)
                    if stat.S_ISREG(opened.st_mode):
                        copy_file_at(file_fd, opened, to_fd, raw)
                finally:
                    os.close(file_fd)
    finally:
        for from_fd, to_fd, _, _ in stack:
            os.close(to_fd)
            if from_fd != source_fd:
                os.close(from_fd)


def flag(value):
    if value not in ("0", "1"):
        raise Refused("invalid", "usage: OVERWRITE is 0 or 1")
    return value == "1"


def op_copy(path, target, overwrite):
    """Copies the file or tree PATH (a final link is followed, inside ROOT only) to TARGET: into a
    temporary name beside it, then renamed into place, replacing what was there when OVERWRITE."""
    overwrite = flag(overwrite)

    def attempt():
        place, name = resolve(path)
        try:
            if name is None:
                return open_final(place, None, O_DIR, path)
            return open_final(place, name, O_READ, path)
        finally:
            place.close()

    source_fd = retrying(attempt)
    try:
        info = os.fstat(source_fd)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            raise Refused("invalid", "%s is neither a file nor a directory" % text(path))
        place, name, there = destination(os.fsencode(target), overwrite)
        try:
            if stat.S_ISDIR(info.st_mode):
                refuse_nesting(info, place, "copy")
            temporary = temporary_name()
            try:
                if stat.S_ISDIR(info.st_mode):
                    copy_tree_at(source_fd, place.fd, temporary)
                else:
                    copy_file_at(source_fd, info, place.fd, temporary)
                if there is not None:
                    remove_tree(place.fd, name)
                os.rename(temporary, name, src_dir_fd=place.fd, dst_dir_fd=place.fd)
            except BaseException:
                try:
                    remove_tree(place.fd, temporary)
                except OSError:
                    pass
                raise
            answer({"ok": {"kind": kind_of(info.st_mode)}})
        except OSError as error:
            raise refuse_os(error, path)
        finally:
            place.close()
    finally:
        os.close(source_fd)


def op_move(path, target, overwrite):
    """Renames PATH (the entry itself: a link stays a link, but one leading outside ROOT is
    refused) to TARGET, replacing what was there when OVERWRITE."""
    overwrite = flag(overwrite)
    source, name = retrying(lambda: resolve(path, follow_last=False))
    try:
        if name is None:
            raise Refused("invalid", "the workspace itself cannot be moved")
        info = existing(source, name)
        if info is None:
            raise Refused("not_found", "no such file or directory: %s" % text(path))
        if stat.S_ISLNK(info.st_mode) and leads_outside(path):
            raise Refused("outside", "%s is a link leading outside the workspace" % source.path(name))
        if not os.access(name, os.W_OK, dir_fd=source.fd, follow_symlinks=False):
            raise Refused("denied", "permission denied: %s is not writable by the sandbox user" % source.path(name))
        place, target_name, there = destination(os.fsencode(target), overwrite)
        try:
            if stat.S_ISDIR(info.st_mode):
                refuse_nesting(info, place, "move")
            same = there is not None and (there.st_dev, there.st_ino) == (info.st_dev, info.st_ino)
            if there is not None and not same:
                remove_tree(place.fd, target_name)
            os.rename(name, target_name, src_dir_fd=source.fd, dst_dir_fd=place.fd)
            answer({"ok": {"kind": kind_of(info.st_mode)}})
        except OSError as error:
            raise refuse_os(error, path)
        finally:
            place.close()
    finally:
        source.close()


OPS = {
    "read": op_read,
    "write": op_write,
    "list": op_list,
    "delete": op_delete,
    "untar": op_untar,
    "tar": op_tar,
    "stat": op_stat,
    "mkdir": op_mkdir,
    "copy": op_copy,
    "move": op_move,
}



def main():
    global ROOT
    if len(sys.argv) < 4 or sys.argv[1] not in OPS:
        answer({"error": "invalid", "message": "usage: OP ROOT PATH ..."})
        return 2
    os.umask(0o022)
    ROOT = os.fsencode(sys.argv[2]).rstrip(b"/")
    try:
        OPS[sys.argv[1]](os.fsencode(sys.argv[3]), *sys.argv[4:])
        sys.stdout.buffer.flush()
        return 0
    except Refused as refused:
        kind, message, entry, side = refused.kind, refused.message, refused.entry, refused.side
    except OSError as error:
        kind, message, entry, side = "io", os.strerror(error.errno or 0), None, None
    except Exception as error:  # a corrupt archive and the like: say so, never a traceback
        kind, message, entry, side = "invalid", "%s: %s" % (type(error).__name__, error), None, None
    failure = {"error": kind, "message": message[:1024]}
    if entry is not None:
        failure["entry"] = entry[:4096]
    if side is not None:
        failure["side"] = side
    if ANSWERED:
        # A payload is under way: stdout is no place for this any more.
        sys.stderr.write(json.dumps(failure) + "\n")
    else:
        answer(failure)
    return 1


sys.exit(main())
