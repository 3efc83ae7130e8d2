// pm2 process file for a Canopy operator: `pm2 start ecosystem.config.js --only canopy-validator`.
// Edit NETUID, NETWORK and the wallet names (made with `btcli wallet create`) first; every
// flag is listed by `canopy-<role> --help` and in the README's Configuration.
const NETUID = process.env.CANOPY_NETUID || "1";
const NETWORK = process.env.CANOPY_NETWORK || "finney";
const BIN = `${__dirname}/.venv/bin`; // the console scripts of `pip install ".[node]"` (./run.sh setup)

function neuron(role, args) {
  return {
    name: `canopy-${role}`,
    script: `${BIN}/canopy-${role}`,
    interpreter: "none",
    cwd: __dirname,
    args: ["--netuid", NETUID, "--network", NETWORK, ...args].join(" "),
    autorestart: true,
    max_restarts: 50,
    restart_delay: 5000,
    kill_timeout: 30000, // SIGTERM first: the miner stops its chute instances, the validator its rounds
  };
}

module.exports = {
  apps: [
    // hosts what the validators announce; add "--chutes.config", "chutes.toml" to pin chutes besides
    neuron("miner", ["--wallet.name", "miner", "--wallet.hotkey", "default", "--axon.port", "8091"]),
    neuron("validator", ["--wallet.name", "validator", "--wallet.hotkey", "default",
                         "--validator.metrics_port", "9100"]),
    neuron("api", ["--wallet.name", "validator", "--wallet.hotkey", "default", "--axon.port", "8000"]),
  ],
};
