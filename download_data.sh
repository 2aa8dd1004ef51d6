#!/usr/bin/env bash
# Download the MS MARCO passage + document data and the TREC DL 2019 test files
# into data/{passage,doc}/dataset/ (the files DRhard's preprocess.py reads).
#
#   bash download_data.sh            # everything, like the original
#   bash download_data.sh --passage  # only data/passage/dataset
#   bash download_data.sh --doc      # only data/doc/dataset
#
# Safe to re-run:
#   * a file is complete when its final name exists: downloads go to <name>.part
#     and are renamed only after curl succeeded and the archive passed its check
#     (gzip -t; tar -tzf for the tarball); a .gz is unpacked to a temporary name and
#     renamed, then removed (as the original's gunzip did). A complete file is skipped
#     without touching the network.
#   * collectionandqueries.tar.gz is kept and unpacked in place; the marker
#     .collectionandqueries.extracted records a complete extraction.
#   * an interrupted download is resumed from its .part (curl -C -, HTTP Range).
#   * any failure stops the script with the file name; a corrupt archive is removed
#     so that the next run fetches it again.
#
# Sources (environment variables, defaults = the official hosts):
#   MSMARCO_URL          MS MARCO files. The original script used
#                        https://msmarco.blob.core.windows.net/msmarcoranking, which has
#                        answered 404 since early 2024; the files moved to the default below.
#   MSMARCO_PASSAGE_URL  passage files (default $MSMARCO_URL)
#   MSMARCO_DOC_URL      document files (default $MSMARCO_URL)
#   TREC_DL_URL          NIST TREC DL qrels (default https://trec.nist.gov/data/deep)
#   DRHARD_DATA_DIR      where data/ is (default: data/ beside this script)
set -euo pipefail

MSMARCO_URL=${MSMARCO_URL:-https://msmarco.z22.web.core.windows.net/msmarcoranking}
MSMARCO_PASSAGE_URL=${MSMARCO_PASSAGE_URL:-$MSMARCO_URL}
MSMARCO_DOC_URL=${MSMARCO_DOC_URL:-$MSMARCO_URL}
TREC_DL_URL=${TREC_DL_URL:-https://trec.nist.gov/data/deep}
DATA_DIR=${DRHARD_DATA_DIR:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/data"}

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Exit statuses as every DRhard program (README "Exit statuses"): 1 with one "error: ..." line on
# stderr, 2 for a bad command line, 130 when interrupted (Ctrl-C).
die() { echo "error: download_data.sh: $*" >&2; exit 1; }
say() { echo "download_data.sh: $*" >&2; }
trap 'echo "interrupted" >&2; exit 130' INT

command -v curl >/dev/null || die "curl is required"

want_passage=0
want_doc=0
for arg in "$@"; do
    case "$arg" in
        --passage) want_passage=1 ;;
        --doc) want_doc=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "error: download_data.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
if [ $want_passage = 0 ] && [ $want_doc = 0 ]; then
    want_passage=1
    want_doc=1
fi

# fetch URL DEST: download to DEST.part (resuming), check it, rename to DEST.
fetch() {
    local url=$1 dest=$2 part="$2.part"
    if [ -e "$dest" ]; then
        say "have $dest"
        return 0
    fi
    local have=0 remote=""
    if [ -s "$part" ]; then
        # A .part as long as the remote file was complete when the run was killed
        # (a resume would get 416); one longer than it is stale.
        have=$(($(wc -c < "$part")))
        remote=$(curl --fail --location --silent --head "$url" | tr -d '\r' \
                 | awk 'tolower($1) == "content-length:" { n = $2 } END { print n }') || remote=""
        if [ -n "$remote" ] && [ "$have" -gt "$remote" ]; then
            say "discarding $part: longer than the remote file"
            rm -f "$part"
            have=0
        fi
    fi
    if [ -n "$remote" ] && [ "$have" -eq "$remote" ]; then
        say "have all of $part"
    else
        if [ "$have" -gt 0 ]; then say "resuming $url at byte $have"; else say "fetching $url -> $dest"; fi
        curl --fail --location --silent --show-error --retry 3 --retry-delay 2 \
            --continue-at - --output "$part" "$url" \
            || die "download failed: $url -> $dest (partial data kept in $part; re-run to resume)"
    fi
    case "$dest" in
        *.tar.gz|*.tgz)
            { gzip -t "$part" 2>/dev/null && tar -tzf "$part" >/dev/null 2>&1; } \
                || { rm -f "$part"; die "corrupt archive $dest from $url (removed; re-run to fetch it again)"; } ;;
        *.gz)
            gzip -t "$part" 2>/dev/null \
                || { rm -f "$part"; die "corrupt archive $dest from $url (removed; re-run to fetch it again)"; } ;;
    esac
    mv -f "$part" "$dest"
}

# fetch_gunzip URL DIR NAME: DIR/NAME from URL/NAME.gz; the .gz is removed once unpacked.
fetch_gunzip() {
    local base=$1 dir=$2 name=$3
    local out="$dir/$name" gz="$dir/$name.gz"
    if [ -e "$out" ]; then
        say "have $out"
        return 0
    fi
    fetch "$base/$name.gz" "$gz"
    gzip -dc "$gz" > "$out.tmp" || { rm -f "$out.tmp"; die "cannot unpack $gz"; }
    mv -f "$out.tmp" "$out"
    rm -f "$gz"
}

# fetch_untar URL DIR NAME FILE...: unpack DIR/NAME into DIR and check that FILEs came out.
fetch_untar() {
    local base=$1 dir=$2 name=$3
    shift 3
    local marker="$dir/.${name%.tar.gz}.extracted"
    if [ -e "$marker" ]; then
        say "have $dir/$name (unpacked)"
        return 0
    fi
    fetch "$base/$name" "$dir/$name"
    tar -xzf "$dir/$name" -C "$dir" || die "cannot unpack $dir/$name"
    local f
    for f in "$@"; do
        [ -e "$dir/$f" ] || die "$dir/$name did not contain $f"
    done
    touch "$marker"
}

if [ $want_passage = 1 ]; then
    dir="$DATA_DIR/passage/dataset"
    mkdir -p "$dir"
    fetch_untar "$MSMARCO_PASSAGE_URL" "$dir" collectionandqueries.tar.gz \
        collection.tsv queries.train.tsv qrels.train.tsv queries.dev.small.tsv qrels.dev.small.tsv \
        queries.eval.small.tsv
    fetch_gunzip "$MSMARCO_PASSAGE_URL" "$dir" msmarco-test2019-queries.tsv
    fetch "$TREC_DL_URL/2019qrels-pass.txt" "$dir/2019qrels-pass.txt"
fi

if [ $want_doc = 1 ]; then
    dir="$DATA_DIR/doc/dataset"
    mkdir -p "$dir"
    for name in msmarco-docs.tsv msmarco-doctrain-queries.tsv msmarco-doctrain-qrels.tsv \
                msmarco-test2019-queries.tsv; do
        fetch_gunzip "$MSMARCO_DOC_URL" "$dir" "$name"
    done
    fetch "$TREC_DL_URL/2019qrels-docs.txt" "$dir/2019qrels-docs.txt"
    for name in msmarco-docdev-queries.tsv msmarco-docdev-qrels.tsv docleaderboard-queries.tsv; do
        fetch_gunzip "$MSMARCO_DOC_URL" "$dir" "$name"
    done
fi

say "done"
