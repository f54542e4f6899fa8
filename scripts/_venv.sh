# Sourced by run.sh and test.sh (from the repository's root): `use_venv LOCK [ALSO_ENOUGH...]`
# makes the virtualenv $VENV (default .venv), made by the interpreter $PYTHON (default python3),
# hold the versions pinned in LOCK (hash-checked) and the server installed from this tree
# (editable). A stamp in the virtualenv records the lock's and pyproject.toml's hashes and the
# interpreter: while they match, nothing is installed, so a second start is immediate and needs no
# network. ALSO_ENOUGH: other locks whose stamp will do (requirements-dev.lock holds every version
# of requirements.lock, so run.sh needs nothing more after test.sh). A virtualenv made by another
# interpreter, or broken, is made anew.

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# "Python 3.11.7 at /root/.pyenv/versions/3.11.7": the interpreter's version and installation (a
# virtualenv's python reports the installation it was made from).
_python_identity() {
    "$1" -c 'import sys; print("Python %d.%d.%d at %s" % (*sys.version_info[:3], sys.base_prefix))' 2>/dev/null
}

_stamp_of() {
    echo "$(_python_identity "$VENV/bin/python") $(sha256sum "$1" pyproject.toml | cut -c1-64 | tr '\n' ' ')$1"
}

use_venv() {
    local lock=$1 wanted have stamp_file="$VENV/.alliswell-installed" candidate
    if ! "$PYTHON" -c '' 2>/dev/null; then
        echo "$PYTHON does not run here: install Python 3.11, 3.12 or 3.13, or set" \
            "PYTHON=/path/to/python3" >&2
        exit 1
    fi
    wanted=$(_python_identity "$PYTHON")
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "$PYTHON is $wanted: the server needs Python 3.11 or later (set PYTHON=python3.11)" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info >= (3, 14))'; then
        echo "warning: $PYTHON is $wanted; the server is tested on Python 3.11 to 3.13 only" >&2
    fi
    if [ -e "$VENV" ]; then
        have=$(_python_identity "$VENV/bin/python" || true)
        if [ "$have" != "$wanted" ]; then
            echo "$VENV was made by ${have:-a Python that no longer runs}, not $wanted: making it anew" >&2
            rm -rf "$VENV"
        fi
    fi
    if [ ! -e "$VENV" ]; then
        "$PYTHON" -m venv "$VENV"
    fi

    for candidate in "$@"; do
        if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$(_stamp_of "$candidate")" ]; then
            return 0
        fi
    done

    echo "Installing $lock into $VENV ($wanted)..." >&2
    rm -f "$stamp_file"
    # Exactly the locked files (--require-hashes), nothing resolved anew (--no-deps); then the
    # server itself, built by the locked setuptools (--no-build-isolation: nothing unpinned).
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r "$lock"
    # setuptools tells every editable install to mind same-named folders: known, and noise here.
    PYTHONWARNINGS="ignore:Editable installation:UserWarning" \
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --no-build-isolation -e .
    _stamp_of "$lock" >"$stamp_file"
}
