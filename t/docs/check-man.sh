#!/usr/bin/env bash
# check-man.sh - the docs test: every public identifier of the plugin API has
# a manual page, and every page in man/ passes mandoc's lint.
#
# The source tree is $SL_TOP_SRCDIR (set by the test harness) or, when that
# is unset, two directories above this script.  Each check below is one test
# case; a failing case prints a "FAIL:" line naming what is wrong, and the
# last line is always "N passed, M failed".  The exit status is 0 only when
# nothing failed.
#
# Rules:
#   1. mandoc must be installed (the CI installs it).  Without it the test
#      fails instead of being skipped, so a missing linter cannot pass as
#      "no complaints".
#   2. Identifiers come from plugin-api/sillad/plugin.h with comments
#      removed: the struct tags it defines, plus the opaque sl_* structs it
#      only declares (foreign types such as struct event_base, declared for
#      use in signatures, are not part of the API); enum type names; enum
#      constants; typedef names; #define names and static inline
#      functions, except the include guard and helpers whose names end in
#      "_"; and the function-pointer members of its structs (upcalls and
#      operations).
#   3. A struct, enum type, typedef, macro or inline function is
#      documented when a section-3 page in man/ lists it on an .Nm line, so
#      that "man NAME" finds it.
#   4. An enum constant is documented when a section-3 page lists it on an
#      .Nm line, or marks it up with .Dv on a section-3 page whose .Nm lines
#      list the constant's enum type.
#   5. A function-pointer member is documented when the section-3 page whose
#      .Nm lines list its struct gives it as the first argument of .Fn or
#      .Fo (".It Fn pipe_new", ".Fo pipe_new").
#   6. Every page in man/ (*.1 to *.9) is listed in some automake file
#      (*.am) of the tree, so that it is installed and distributed.
#   7. "mandoc -Tlint -W warning PAGE" prints nothing and exits 0 for every
#      page in man/.
set -u
export LC_ALL=C

top=${SL_TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
header=$top/plugin-api/sillad/plugin.h
mandir=$top/man
passed=0
failed=0

pass() {
    passed=$((passed + 1))
}

fail() {
    failed=$((failed + 1))
    printf 'FAIL: %s\n' "$*"
}

finish() {
    printf '%d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" -eq 0 ]
    exit
}

# --- rule 1: mandoc -------------------------------------------------------
mandoc=${MANDOC:-mandoc}
if command -v "$mandoc" >/dev/null 2>&1; then
    pass
else
    fail "mandoc not found (install mandoc; it lints the pages)"
    mandoc=
fi

if [ ! -r "$header" ]; then
    fail "cannot read $header (set SL_TOP_SRCDIR to the source tree)"
    finish
fi

# --- rule 2: identifiers of plugin.h --------------------------------------
# Prints one record per identifier:
#   type NAME            struct tag, enum type, typedef or macro
#   const NAME ENUMTYPE  enum constant
#   member NAME STRUCT   function-pointer member of a struct
extract_ids() {
    awk '
    function ident_at(s, i) {          # identifier starting at s[i], or ""
        if (!match(substr(s, i), /^[A-Za-z_][A-Za-z0-9_]*/))
            return ""
        return substr(s, i + RSTART - 1, RLENGTH)
    }
    function last_ident(s,    out) {   # last identifier in s
        out = ""
        while (match(s, /[A-Za-z_][A-Za-z0-9_]*/)) {
            out = substr(s, RSTART, RLENGTH)
            s = substr(s, RSTART + RLENGTH)
        }
        return out
    }
    function fnptr_names(s, owner,    n) {   # every "(*name)" in s
        while (match(s, /\([ \t]*\*[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*\)/)) {
            n = substr(s, RSTART, RLENGTH)
            sub(/^\([ \t]*\*[ \t]*/, "", n)
            sub(/[ \t]*\)$/, "", n)
            print "member", n, owner
            s = substr(s, RSTART + RLENGTH)
        }
    }
    function emit_enum(body, type,    n, i, parts, c) {
        n = split(body, parts, ",")
        for (i = 1; i <= n; i++) {
            sub(/^[ \t\n]+/, "", parts[i])
            c = ident_at(parts[i], 1)
            if (c != "")
                print "const", c, type
        }
    }
    # Remove comments, keeping newlines so that directives stay on their
    # own lines.
    { text = text $0 "\n" }
    END {
        out = ""; i = 1; len = length(text)
        while (i <= len) {
            c = substr(text, i, 1); d = substr(text, i, 2)
            if (d == "/*") {
                j = index(substr(text, i + 2), "*/")
                if (j == 0) break
                chunk = substr(text, i, j + 3)
                gsub(/[^\n]/, "", chunk)
                out = out chunk; i += j + 3; continue
            }
            if (d == "//") {
                j = index(substr(text, i), "\n")
                if (j == 0) break
                i += j - 1; continue
            }
            if (c == "\"") {           # string literal, copied as is
                j = i + 1
                while (j <= len && substr(text, j, 1) != "\"") {
                    if (substr(text, j, 1) == "\\") j++
                    j++
                }
                out = out substr(text, i, j - i + 1); i = j + 1; continue
            }
            out = out c; i++
        }
        nl = split(out, line, "\n")
        guard = ""; pending_ifndef = ""; in_macro = 0
        mode = ""; acc = ""; owner = ""; depth = 0
        for (k = 1; k <= nl; k++) {
            l = line[k]
            if (in_macro) {            # continuation of a #define
                in_macro = (l ~ /\\[ \t]*$/)
                continue
            }
            if (l ~ /^[ \t]*#/) {
                in_macro = (l ~ /\\[ \t]*$/)
                if (l ~ /^[ \t]*#[ \t]*ifndef[ \t]/) {
                    if (guard == "" && pending_ifndef == "") {
                        sub(/^[ \t]*#[ \t]*ifndef[ \t]+/, "", l)
                        pending_ifndef = ident_at(l, 1)
                    }
                    continue
                }
                if (l ~ /^[ \t]*#[ \t]*define[ \t]/) {
                    sub(/^[ \t]*#[ \t]*define[ \t]+/, "", l)
                    name = ident_at(l, 1)
                    if (pending_ifndef != "" && guard == "") {
                        guard = pending_ifndef
                        pending_ifndef = ""
                        if (name == guard) continue
                    }
                    if (name != "" && name !~ /_$/ && !(name in seen)) {
                        seen[name] = 1
                        print "type", name
                    }
                }
                continue
            }
            if (mode == "struct") {
                acc = acc " " l
                t = l
                while (match(t, /[{}]/)) {
                    depth += (substr(t, RSTART, 1) == "{") ? 1 : -1
                    t = substr(t, RSTART + 1)
                }
                if (depth <= 0) {
                    fnptr_names(acc, owner)
                    mode = ""; acc = ""
                }
                continue
            }
            if (mode == "enum") {
                acc = acc "\n" l
                if (index(acc, "}")) {
                    emit_enum(substr(acc, 1, index(acc, "}") - 1), owner)
                    mode = ""; acc = ""
                }
                continue
            }
            if (mode == "typedef") {
                acc = acc " " l
                if (index(acc, ";")) {
                    mode = ""
                    l = acc; acc = ""
                } else
                    continue
            }
            if (l ~ /^[ \t]*typedef[ \t]/) {
                if (!index(l, ";")) { mode = "typedef"; acc = l; continue }
                s = substr(l, 1, index(l, ";") - 1)
                if (match(s, /\([ \t]*\*[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*\)/))
                    n = last_ident(substr(s, RSTART, RLENGTH))
                else if (index(s, "("))
                    n = last_ident(substr(s, 1, index(s, "(") - 1))
                else
                    n = last_ident(s)
                if (n != "") print "type", n
                continue
            }
            # static inline helpers: the name before "(", on the line of
            # "static inline" or the next one (skipping helpers ending in _).
            if (l ~ /^[ \t]*static[ \t]+inline([ \t]|$)/ || pending_inline) {
                if (index(l, "(")) {
                    n = last_ident(substr(l, 1, index(l, "(") - 1))
                    if (n != "" && n !~ /_$/ && n != "inline" && !(n in seen)) {
                        seen[n] = 1
                        print "type", n
                    }
                    pending_inline = 0
                } else
                    pending_inline = !pending_inline
                continue
            }
            if (match(l, /^[ \t]*enum[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*\{/)) {
                t = l
                sub(/^[ \t]*enum[ \t]+/, "", t)
                owner = ident_at(t, 1)
                print "type", owner
                acc = substr(l, index(l, "{") + 1)
                if (index(acc, "}")) {
                    emit_enum(substr(acc, 1, index(acc, "}") - 1), owner)
                    acc = ""
                } else
                    mode = "enum"
                continue
            }
            if (match(l, /^[ \t]*struct[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*\{/)) {
                t = l
                sub(/^[ \t]*struct[ \t]+/, "", t)
                owner = ident_at(t, 1)
                print "type", owner
                acc = substr(l, index(l, "{") + 1)
                depth = 1; mode = "struct"
                t = acc
                while (match(t, /[{}]/)) {
                    depth += (substr(t, RSTART, 1) == "{") ? 1 : -1
                    t = substr(t, RSTART + 1)
                }
                if (depth <= 0) { fnptr_names(acc, owner); mode = ""; acc = "" }
                continue
            }
            if (match(l, /^[ \t]*struct[ \t]+sl_[A-Za-z0-9_]*[ \t]*;/)) {
                t = l
                sub(/^[ \t]*struct[ \t]+/, "", t)
                print "type", ident_at(t, 1)
            }
        }
    }' "$header" | awk '!seen[$0]++'
}

ids=$(extract_ids)
if [ -z "$ids" ]; then
    fail "found no identifiers in $header (has its layout changed?)"
else
    pass
fi

# --- what the section-3 pages document ------------------------------------
# One record per fact:  nm PAGE NAME | dv PAGE NAME | fn PAGE NAME
shopt -s nullglob
pages3=("$mandir"/*.3)
pages=("$mandir"/*.[1-9])
shopt -u nullglob

docs=$(
    [ ${#pages3[@]} -eq 0 ] ||
    awk '
    FNR == 1 { page = FILENAME; sub(/.*\//, "", page) }
    /^\.Nm[ \t]/ {
        for (i = 2; i <= NF; i++)
            if ($i ~ /^[A-Za-z_][A-Za-z0-9_]*$/) print "nm", page, $i
        next
    }
    /^\./ {
        for (i = 1; i < NF; i++) {
            if ($i == "Dv" || $i == ".Dv") print "dv", page, $(i + 1)
            if ($i == "Fn" || $i == ".Fn" || $i == "Fo" || $i == ".Fo")
                print "fn", page, $(i + 1)
        }
    }' "${pages3[@]}"
)

# Pages whose .Nm lines list NAME.
nm_pages() {
    awk -v n="$1" '$1 == "nm" && $3 == n { print $2 }' <<<"$docs"
}

# --- rules 3 to 5 ---------------------------------------------------------
while read -r kind name owner; do
    [ -n "$kind" ] || continue
    case $kind in
    type)
        if [ -n "$(nm_pages "$name")" ]; then
            pass
        else
            fail "$name: no section-3 page lists it on an .Nm line"
        fi
        ;;
    const)
        if [ -n "$(nm_pages "$name")" ]; then
            pass
            continue
        fi
        ok=
        for p in $(nm_pages "$owner"); do
            if awk -v p="$p" -v n="$name" \
                '$1 == "dv" && $2 == p && $3 == n { f = 1 } END { exit !f }' \
                <<<"$docs"; then
                ok=1
            fi
        done
        if [ -n "$ok" ]; then
            pass
        else
            fail "$name: not on an .Nm line, nor .Dv on the page of enum $owner"
        fi
        ;;
    member)
        ok=
        for p in $(nm_pages "$owner"); do
            if awk -v p="$p" -v n="$name" \
                '$1 == "fn" && $2 == p && $3 == n { f = 1 } END { exit !f }' \
                <<<"$docs"; then
                ok=1
            fi
        done
        if [ -n "$ok" ]; then
            pass
        else
            fail "$owner.$name: no .Fn or .Fo $name on the page of struct $owner"
        fi
        ;;
    esac
done <<<"$ids"

# --- rules 6 and 7: every page --------------------------------------------
if [ ${#pages[@]} -eq 0 ]; then
    fail "no manual pages in $mandir"
fi
amfiles=$(find "$top" -name '*.am' -not -path '*/autom4te.cache/*' \
    -not -path '*/.git/*' 2>/dev/null)
for page in "${pages[@]}"; do
    base=man/${page##*/}
    # shellcheck disable=SC2086
    if [ -n "$amfiles" ] && grep -qF -- "$base" $amfiles; then
        pass
    else
        fail "$base: not listed in any *.am file (dist_man_MANS)"
    fi
    [ -n "$mandoc" ] || continue
    out=$("$mandoc" -Tlint -W warning "$page" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
        pass
    else
        fail "$base: mandoc -Tlint -W warning (exit $rc):"
        [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /'
    fi
done

finish
