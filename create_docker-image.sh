#!/usr/bin/env bash
# Build the background-processing container image (Dockerfile) and tag it;
# optionally push it to a registry or load it into a local kind or minikube
# cluster. Run `./create_docker-image.sh --help` for the details.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
    cat <<'EOF'
Usage: ./create_docker-image.sh [--load kind|minikube] [--no-push] [-- DOCKER_BUILD_ARGS...]

Builds the background-processing image from the Dockerfile (the builder stage
runs scripts/build-release, the release build CI runs) and tags it twice:

  IMAGE:VERSION-COMMIT   VERSION from Cargo.toml, COMMIT the git short commit
                         (with -dirty when what goes into the image has
                         uncommitted changes); the tag to deploy
  IMAGE:latest           moves with every build

Options:
  --load kind|minikube   load the tagged image into a local cluster after the
                         build: `kind load docker-image` (cluster $KIND_CLUSTER,
                         default "kind") or `minikube image load` (profile
                         $MINIKUBE_PROFILE, default "minikube")
  --no-push              with REGISTRY set: tag for the registry, but do not push
  -h, --help             print this help and exit
  -- ARGS...             pass the remaining arguments to `docker build`
                         (e.g. -- --platform linux/amd64 --no-cache)

Environment:
  IMAGE      image name (default: background-processing)
  REGISTRY   when set (e.g. ghcr.io/acme), the image is named REGISTRY/IMAGE and
             every tag is pushed there after the build (log in first:
             `docker login`); when unset nothing is pushed
  DOCKER     the container CLI (default: docker; podman works too)

Examples:
  ./create_docker-image.sh --load kind
  REGISTRY=registry.example.com/team ./create_docker-image.sh

Then deploy (see README, "Run it in Kubernetes"):
  kubectl apply -f build.yaml -l 'app.kubernetes.io/component!=secret-template'
  kubectl set image deployment/background-processing \
      background-processing=IMAGE:VERSION-COMMIT migrate=IMAGE:VERSION-COMMIT
EOF
}

die() {
    printf 'create_docker-image.sh: error: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'create_docker-image.sh: %s (see --help)\n' "$*" >&2
    exit 2
}

load=""
push=true
build_args=()
while (($# > 0)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --load)
        (($# >= 2)) || usage_error "--load needs kind or minikube"
        load="$2"
        shift 2
        ;;
    --load=*)
        load="${1#--load=}"
        shift
        ;;
    --no-push)
        push=false
        shift
        ;;
    --)
        shift
        build_args=("$@")
        break
        ;;
    *)
        usage_error "unknown option '$1'"
        ;;
    esac
done
case "${load}" in
"" | kind | minikube) ;;
*) usage_error "--load takes kind or minikube, not '${load}'" ;;
esac

docker_cli="${DOCKER:-docker}"
name="${IMAGE:-background-processing}"
registry="${REGISTRY:-}"
registry="${registry%/}"
if [[ -n "${registry}" ]]; then
    name="${registry}/${name}"
fi

# The package version: the first `version = "..."` of the [package] table.
version="$(awk -F'"' '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && /^version[[:space:]]*=/ { print $2; exit }
' Cargo.toml)"
[[ -n "${version}" ]] || die "no version found in the [package] table of Cargo.toml"

if commit="$(git rev-parse --short HEAD 2>/dev/null)"; then
    # Dirty only if what goes into the image (see .dockerignore) differs.
    if [[ -n "$(git status --porcelain -- Dockerfile Cargo.toml Cargo.lock schema.sql \
        src scripts/build-release 2>/dev/null)" ]]; then
        commit="${commit}-dirty"
    fi
    revision="$(git rev-parse HEAD)"
else
    commit="nogit"
    revision="unknown"
fi

tag="${name}:${version}-${commit}"
latest="${name}:latest"

command -v "${docker_cli}" >/dev/null 2>&1 ||
    die "'${docker_cli}' not found: install Docker (or set DOCKER=podman)"
case "${load}" in
kind) command -v kind >/dev/null 2>&1 || die "--load kind: 'kind' not found" ;;
minikube) command -v minikube >/dev/null 2>&1 || die "--load minikube: 'minikube' not found" ;;
esac

printf '==> building %s\n' "${tag}"
"${docker_cli}" build \
    --file Dockerfile \
    --tag "${tag}" \
    --tag "${latest}" \
    --label "org.opencontainers.image.title=background-processing" \
    --label "org.opencontainers.image.version=${version}" \
    --label "org.opencontainers.image.revision=${revision}" \
    ${build_args[@]+"${build_args[@]}"} \
    .

if [[ -n "${registry}" ]]; then
    if [[ "${push}" == true ]]; then
        for t in "${tag}" "${latest}"; do
            printf '==> pushing %s\n' "${t}"
            "${docker_cli}" push "${t}"
        done
    else
        printf '==> not pushing (--no-push)\n'
    fi
fi

case "${load}" in
kind)
    cluster="${KIND_CLUSTER:-kind}"
    for t in "${tag}" "${latest}"; do
        printf '==> loading %s into kind cluster %s\n' "${t}" "${cluster}"
        kind load docker-image "${t}" --name "${cluster}"
    done
    ;;
minikube)
    profile="${MINIKUBE_PROFILE:-minikube}"
    for t in "${tag}" "${latest}"; do
        printf '==> loading %s into minikube profile %s\n' "${t}" "${profile}"
        minikube image load "${t}" --profile "${profile}"
    done
    ;;
esac

printf '==> done: %s and %s\n' "${tag}" "${latest}"
printf 'deploy it: kubectl set image deployment/background-processing background-processing=%s migrate=%s\n' \
    "${tag}" "${tag}"
