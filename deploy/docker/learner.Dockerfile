# syntax=docker/dockerfile:1.7
# lockstep learner service. Build context: the repository root.
#   docker build -f deploy/docker/learner.Dockerfile --target cuda -t lockstep/learner:0.1.0-cuda .
#   docker build -f deploy/docker/learner.Dockerfile --target cpu  -t lockstep/learner:0.1.0-cpu  .
# cuda (the default target): CUDA 13 runtime base, LibTorch with CUDA, the invariant CUDA kernels, for
# Hopper (sm_90a). cpu: Debian's LibTorch 1.13, the CPU kernels; the Helm chart's default.
# Both embed the tiny model at /opt/lockstep/models/tiny (lockstep_make_model --preset tiny --seed 1),
# run as uid 10001 and expose gRPC 50052 (lockstep.v1.LearnerService, grpc.health.v1, reflection) and
# metrics 9401 (/metrics). Checkpoints go to /var/lib/lockstep/checkpoints unless --checkpoint_dir says
# otherwise (the Helm chart mounts a PersistentVolumeClaim). Without --rollout/--drive flags the learner
# waits for clients; the chart passes them.
# The build stages install exactly scripts/install-deps.sh; the runtime stages install
# deploy/docker/runtime-packages*.txt, which tests/deploy/docker_runtime_libs_test.py keeps in step with
# what the built binaries load (ldd).

ARG DEBIAN_BUILD_IMAGE=debian:bookworm
ARG DEBIAN_RUNTIME_IMAGE=debian:bookworm-slim
# CUDA from NVIDIA's Debian 12 repository: the Debian packages lockstep builds on are bookworm's.
ARG CUDA_VERSION=13.0
ARG CUDA_REPO=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64
# LibTorch 2.x built for CUDA 13 (cxx11 ABI): https://pytorch.org/get-started/locally/ lists the URL.
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu130/libtorch-shared-with-deps-2.9.0%2Bcu130.zip
ARG CUDA_ARCHITECTURES=90a

############################## CPU build ##############################
FROM ${DEBIAN_BUILD_IMAGE} AS build-cpu
ENV DEBIAN_FRONTEND=noninteractive LOCKSTEP_SKIP_DEPLOY_TOOLS=1
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN apt-get update -q && /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLOCKSTEP_CUDA=OFF \
      -DLOCKSTEP_BUILD_TESTS=OFF -DLOCKSTEP_BUILD_BENCH=OFF \
 && cmake --build /build -j "$(nproc)" --target learner_service lockstep_make_model \
 && mkdir -p /out/bin /out/lib /out/models \
 && cp /build/learner_service/learner_service /out/bin/ \
 && find /build -name 'lib*.so*' \( -type f -o -type l \) -exec cp -a {} /out/lib/ \; \
 && /build/common/lockstep_make_model --preset tiny --seed 1 --out /out/models/tiny

############################## CUDA build ##############################
FROM ${DEBIAN_BUILD_IMAGE} AS build-cuda
ARG CUDA_VERSION CUDA_REPO LIBTORCH_URL CUDA_ARCHITECTURES
ENV DEBIAN_FRONTEND=noninteractive LOCKSTEP_SKIP_DEPLOY_TOOLS=1
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN apt-get update -q && /src/scripts/install-deps.sh \
 && apt-get install -y -q --no-install-recommends wget unzip ninja-build \
 && wget -q "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" && dpkg -i cuda-keyring_1.1-1_all.deb \
 && rm cuda-keyring_1.1-1_all.deb && apt-get update -q \
 && v="$(echo "${CUDA_VERSION}" | tr . -)" \
 && apt-get install -y -q --no-install-recommends "cuda-nvcc-$v" "cuda-cudart-dev-$v" \
      "libcublas-dev-$v" "cuda-nvrtc-dev-$v" "cuda-nvtx-$v" libnccl-dev \
 && wget -q -O /tmp/libtorch.zip "${LIBTORCH_URL}" && unzip -q /tmp/libtorch.zip -d /opt \
 && rm /tmp/libtorch.zip && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH} TORCH_CUDA_ARCH_LIST=9.0a NCCL_NVLS_ENABLE=0
COPY . /src
WORKDIR /src
# LibTorch with CUDA first on the prefix path, ahead of Debian's CPU LibTorch 1.13.
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=/opt/libtorch \
      -DLOCKSTEP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
      -DLOCKSTEP_BUILD_TESTS=OFF -DLOCKSTEP_BUILD_BENCH=OFF \
 && cmake --build /build --target learner_service lockstep_make_model \
 && mkdir -p /out/bin /out/lib /out/models \
 && cp /build/learner_service/learner_service /out/bin/ \
 && find /build -name 'lib*.so*' \( -type f -o -type l \) -exec cp -a {} /out/lib/ \; \
 && /build/common/lockstep_make_model --preset tiny --seed 1 --out /out/models/tiny

############################## CPU runtime ##############################
FROM ${DEBIAN_RUNTIME_IMAGE} AS cpu
COPY deploy/docker/runtime-packages.txt deploy/docker/runtime-packages-cpu.txt /tmp/
RUN apt-get update -q \
 && cat /tmp/runtime-packages.txt /tmp/runtime-packages-cpu.txt | sed 's/#.*//' | xargs \
      apt-get install -y -q --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages*.txt \
 && groupadd --system --gid 10001 lockstep \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lockstep --create-home \
      --shell /usr/sbin/nologin lockstep \
 && install -d -o 10001 -g 10001 /var/lib/lockstep/checkpoints
COPY --from=build-cpu /out/bin/ /opt/lockstep/bin/
COPY --from=build-cpu /out/lib/ /opt/lockstep/lib/
COPY --from=build-cpu /out/models/ /opt/lockstep/models/
ENV LD_LIBRARY_PATH=/opt/lockstep/lib PATH=/opt/lockstep/bin:${PATH}
USER 10001:10001
WORKDIR /var/lib/lockstep
EXPOSE 50052 9401
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/lockstep/bin/learner_service"]
CMD ["--port=50052", "--metrics_port=9401", "--model_dir=/opt/lockstep/models/tiny", "--device=cpu", "--kernels=invariant", "--checkpoint_dir=/var/lib/lockstep/checkpoints"]

############################## CUDA 13 runtime base ##############################
# What nvidia/cuda:13.0-runtime holds, on Debian 12.
FROM ${DEBIAN_RUNTIME_IMAGE} AS cuda-runtime-base
ARG CUDA_VERSION CUDA_REPO
COPY deploy/docker/runtime-packages-cuda.txt /tmp/
RUN apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates wget \
 && wget -q "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" && dpkg -i cuda-keyring_1.1-1_all.deb \
 && rm cuda-keyring_1.1-1_all.deb && apt-get update -q \
 && sed -e 's/#.*//' -e "s/@CUDA@/$(echo "${CUDA_VERSION}" | tr . -)/g" /tmp/runtime-packages-cuda.txt \
      | xargs apt-get install -y -q --no-install-recommends \
 && apt-get purge -y -q wget && apt-get autoremove -y -q \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages-cuda.txt
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0" NCCL_NVLS_ENABLE=0

############################## CUDA runtime (default) ##############################
FROM cuda-runtime-base AS cuda
COPY deploy/docker/runtime-packages.txt /tmp/
RUN apt-get update -q \
 && sed 's/#.*//' /tmp/runtime-packages.txt | xargs apt-get install -y -q --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 lockstep \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lockstep --create-home \
      --shell /usr/sbin/nologin lockstep \
 && install -d -o 10001 -g 10001 /var/lib/lockstep/checkpoints
COPY --from=build-cuda /opt/libtorch/lib/ /opt/libtorch/lib/
COPY --from=build-cuda /out/bin/ /opt/lockstep/bin/
COPY --from=build-cuda /out/lib/ /opt/lockstep/lib/
COPY --from=build-cuda /out/models/ /opt/lockstep/models/
ENV LD_LIBRARY_PATH=/opt/lockstep/lib:/opt/libtorch/lib:/usr/local/cuda/lib64 \
    PATH=/opt/lockstep/bin:${PATH}
USER 10001:10001
WORKDIR /var/lib/lockstep
EXPOSE 50052 9401
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/lockstep/bin/learner_service"]
CMD ["--port=50052", "--metrics_port=9401", "--model_dir=/opt/lockstep/models/tiny", "--device=cuda", "--kernels=invariant", "--checkpoint_dir=/var/lib/lockstep/checkpoints"]
