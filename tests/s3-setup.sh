#!/usr/bin/env bash
# Builds the S3-compatible server the tests run against (s3s-fs: a real S3 server over a folder,
# with SigV4 authentication, multipart uploads and ranged reads) once into a cache folder outside
# the repository, and prints its path. tests/all.sh exports it as VAULT_S3_SERVER.
#   tests/s3-setup.sh            # prints e.g. ~/.cache/vault-ci/s3s-fs-0.14.1/bin/s3s-fs
# Why not Garage: the same tests pass against any S3 endpoint (VAULT_S3_SERVER only starts one),
# and Garage's build (several hundred crates, C storage engines) takes most of CI's time budget
# on a fresh 2-core machine, where s3s-fs takes about 4 CPU-minutes.
set -euo pipefail
version=0.14.1
root=${XDG_CACHE_HOME:-$HOME/.cache}/vault-ci/s3s-fs-$version
bin=$root/bin/s3s-fs
if [ ! -x "$bin" ]; then
  echo "building s3s-fs $version into $root (once)" >&2
  cargo install s3s-fs --version "$version" --features binary --locked --root "$root" >&2
fi
echo "$bin"
