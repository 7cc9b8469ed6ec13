#!/usr/bin/env bash
# Pin the image's base by digest: a tag can be re-pushed under us, a digest cannot. Run where the
# registry is reachable (it asks it for the tag in k8s/Dockerfile's `ARG RAY_IMAGE`), commit the
# k8s/base-image.lock it writes, and build with --build-arg RAY_IMAGE=$(cat k8s/base-image.lock);
# the Dockerfile refuses a base without a digest. Re-run on purpose to move to a new base.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=$(sed -n 's/^ARG RAY_IMAGE=//p' k8s/Dockerfile)
digest=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest}}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])')
case "$digest" in
    sha256:*) ;;
    *) echo "no digest for $tag: $digest" >&2; exit 1 ;;
esac
echo "${tag}@${digest}" > k8s/base-image.lock
echo "k8s/base-image.lock: ${tag}@${digest}"
