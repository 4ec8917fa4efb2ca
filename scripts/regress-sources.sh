#!/usr/bin/env bash
# regress-sources.sh — PostgreSQL's regression suite for the installed server,
# for scripts/transparency.sh: the sql/, expected/ and data/ files and
# parallel_schedule from the Debian source package of exactly the installed
# server version, the test's C module (regress.so) built against that
# server's headers with PGXS, and the pg_regress binary Debian ships.
#
#	bash scripts/regress-sources.sh [BINDIR]
#
# BINDIR is the directory of the server's postgres binary (default: the one
# testenv uses: initdb on PATH, else the newest /usr/lib/postgresql/*/bin).
# On success it prints shell assignments on stdout:
#
#	REGRESS_VERSION   the installed server's Debian version, e.g. 15.18-0+deb12u1
#	REGRESS_SOURCE_VERSION  the version the suite's files come from: the same,
#	                  unless apt cannot download that one (a security update
#	                  whose source the mirror lacks): then the newest one of
#	                  the same major version it can, with a warning
#	REGRESS_SRC       directory with sql/ expected/ data/ parallel_schedule
#	REGRESS_LIB       directory with regress.so, autoinc.so, refint.so (--dlpath)
#	PG_REGRESS        the pg_regress binary
#	REGRESS_BINDIR    the directory psql is taken from (--bindir)
#
# The result is cached in $REGRESS_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/pgcloak/regress-<package>-<version>), so a
# second run costs nothing. The download goes through apt (`apt-get source
# --download-only`), which checks the files against the signed Sources index;
# the orig tarball is also checked against the .dsc's SHA-256. apt needs
# deb-src lines for the archive the server package came from (.ci/run adds
# them); building regress.so needs postgresql-server-dev-<major> of the same
# version, gcc and make. Exits 2, saying what is missing, when it cannot.
set -euo pipefail
export LC_ALL=C

die() {
	echo "regress-sources: $*" >&2
	exit 2
}

bindir=${1:-}
if [[ -z $bindir ]]; then
	if initdb_path=$(command -v initdb 2>/dev/null); then
		bindir=$(dirname "$(readlink -f "$initdb_path")")
	else
		initdb_path=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1 || true)
		[[ -n $initdb_path ]] || die "no PostgreSQL server binaries (initdb) found; install them with: apt-get install -y postgresql"
		bindir=$(dirname "$initdb_path")
	fi
fi
postgres_bin=$(readlink -f "$bindir/postgres")
[[ -x $postgres_bin ]] || die "$bindir/postgres not found"

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: the suite's sources come from the Debian source package of the installed server"
pkg=$(dpkg -S "$postgres_bin" 2>/dev/null | head -n1 | cut -d: -f1) ||
	die "$postgres_bin belongs to no Debian package; the suite's sources are taken from the Debian source package of the installed server"
[[ -n $pkg ]] || die "$postgres_bin belongs to no Debian package"
version=$(dpkg-query -W -f='${Version}' "$pkg")
srcpkg=$(dpkg-query -W -f='${source:Package}' "$pkg")
major=${pkg##*-} # postgresql-15 -> 15
pg_config=$bindir/pg_config
[[ -x $pg_config ]] || die "$pg_config not found; install it with: apt-get install -y postgresql-client-$major=$version"
pkglibdir=$("$pg_config" --pkglibdir)
pg_regress=$pkglibdir/pgxs/src/test/regress/pg_regress
[[ -x $pg_regress ]] || die "$pg_regress not found; install it with: apt-get install -y postgresql-client-$major=$version"

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/pgcloak
cache=${REGRESS_CACHE:-$cache_root/regress-$srcpkg-$version}

emit() {
	printf 'REGRESS_VERSION=%q\nREGRESS_SOURCE_VERSION=%q\nREGRESS_SRC=%q\nREGRESS_LIB=%q\nPG_REGRESS=%q\nREGRESS_BINDIR=%q\n' \
		"$version" "$(cut -d' ' -f2 "$cache/complete")" "$cache/regress" "$cache/lib" "$pg_regress" "$bindir"
}

if [[ -f $cache/complete ]]; then
	emit
	exit 0
fi

echo "regress-sources: preparing the regression suite of $srcpkg $version in $cache" >&2
mkdir -p "$(dirname "$cache")"
tmp=$(mktemp -d "$cache.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/dl" "$tmp/regress" "$tmp/lib" "$tmp/build"

# --- Download (apt checks the files against the signed Sources index).
download() { # version
	rm -rf "$tmp/dl"
	mkdir -p "$tmp/dl"
	(cd "$tmp/dl" && apt-get source --download-only -q "$srcpkg=$1") >"$tmp/apt.log" 2>&1 </dev/null
}
srcversion=$version
if ! download "$version"; then
	cat "$tmp/apt.log" >&2
	if grep -q 'You must put some .deb-src' "$tmp/apt.log"; then
		die "apt has no deb-src lines: add them for the archive $pkg came from and run apt-get update (.ci/run does)"
	fi
	# The nearest other version of the same major that apt can download.
	srcversion=
	upstream=${version%%-*}
	for v in $(apt-cache showsrc "$srcpkg" 2>/dev/null | awk '/^Version:/ {print $2}' | sort -u |
		awk -v want="$version" '$0 != want' | sort -rV); do
		[[ ${v%%.*} == "${upstream%%.*}" ]] || continue
		if download "$v"; then
			srcversion=$v
			break
		fi
	done
	[[ -n $srcversion ]] || die "apt-get source --download-only $srcpkg=$version failed (above), and no other version of $srcpkg could be downloaded"
	echo "regress-sources: WARNING: the source of $srcpkg $version cannot be downloaded; using the suite of $srcversion for the $version server" >&2
fi
dsc=$(compgen -G "$tmp/dl/*.dsc" | head -n1) || true
[[ -n $dsc ]] || die "apt-get source left no .dsc in $tmp/dl"
orig=$(compgen -G "$tmp/dl/*.orig.tar.*" | grep -v '\.asc$' | head -n1) || true
[[ -n $orig ]] || die "apt-get source left no orig tarball in $tmp/dl"

# --- The .dsc's SHA-256 of each file it names.
(cd "$tmp/dl" && awk '/^Checksums-Sha256:/ {on=1; next} /^[^ ]/ {on=0} on && NF == 3 {print $1 "  " $3}' "$dsc" >"$tmp/sha256")
grep -qF "  $(basename "$orig")" "$tmp/sha256" || die "$(basename "$dsc") lists no SHA-256 for $(basename "$orig")"
(cd "$tmp/dl" && sha256sum --quiet -c "$tmp/sha256") >&2 || die "a file of $srcpkg $version does not match the SHA-256 in its .dsc"

# --- Only src/test/regress of the orig tarball.
tar -xf "$orig" -C "$tmp/regress" --strip-components=4 --wildcards '*/src/test/regress/*' ||
	die "could not unpack src/test/regress from $(basename "$orig")"
[[ -f $tmp/regress/parallel_schedule && -d $tmp/regress/sql && -d $tmp/regress/expected ]] ||
	die "$(basename "$orig") has no src/test/regress/parallel_schedule, sql/ or expected/"

# Debian's patches that touch the suite, in series order (none in 15.18).
debtar=$(compgen -G "$tmp/dl/*.debian.tar.*" | head -n1) || true
if [[ -n $debtar ]]; then
	mkdir -p "$tmp/debian"
	tar -xf "$debtar" -C "$tmp/debian"
	series=$tmp/debian/debian/patches/series
	if [[ -f $series ]]; then
		while read -r p _; do
			[[ -z $p || $p == \#* ]] && continue
			f=$tmp/debian/debian/patches/$p
			if grep -q '^+++ [^ ]*src/test/regress/' "$f"; then
				echo "regress-sources: applying Debian patch $p" >&2
				filterdiff_ok=0
				# The patch may touch other files too: apply only its
				# src/test/regress hunks, which lie under regress/ here.
				if command -v filterdiff >/dev/null 2>&1; then filterdiff_ok=1; fi
				if ((filterdiff_ok)); then
					filterdiff -i '*src/test/regress/*' "$f" | patch -s -p4 -d "$tmp/regress" || die "Debian patch $p does not apply"
				else
					die "Debian patch $p touches src/test/regress; install patchutils (filterdiff) to apply it"
				fi
			fi
		done <"$series"
	fi
fi

# --- regress.so, built with PGXS against the installed server's headers.
[[ -f $("$pg_config" --includedir-server)/postgres.h ]] ||
	die "the server headers are missing; install them with: apt-get install -y postgresql-server-dev-$major=$version"
command -v make >/dev/null 2>&1 || die "make not found; apt-get install -y make"
cp "$tmp/regress/regress.c" "$tmp/build/"
printf 'MODULES = regress\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' >"$tmp/build/Makefile"
# with_llvm=no: no bitcode, so no clang is needed.
make -s -C "$tmp/build" PG_CONFIG="$pg_config" with_llvm=no >"$tmp/build.log" 2>&1 || {
	cat "$tmp/build.log" >&2
	die "building regress.so failed (above)"
}
cp "$tmp/build/regress.so" "$tmp/lib/"
# The suite also loads contrib/spi's autoinc and refint from --dlpath.
for m in autoinc refint; do
	[[ -f $pkglibdir/$m.so ]] || die "$pkglibdir/$m.so not found; it comes with $pkg"
	cp "$pkglibdir/$m.so" "$tmp/lib/"
done

rm -rf "$tmp/dl" "$tmp/debian" "$tmp/build" "$tmp/build.log" "$tmp/apt.log" "$tmp/sha256"
echo "$srcpkg $srcversion" >"$tmp/complete"
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
emit
