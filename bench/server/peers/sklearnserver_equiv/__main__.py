"""`python -m sklearnserver_equiv --model_dir DIR --model_name NAME --http_port P --workers N`.

The command line is KServe's own (`kserve.model_server.parser`) plus `--model_dir`,
as in KServe's sklearnserver. Run it with the KServe virtual environment's Python
and this folder's parent on PYTHONPATH (the benchmark does both).
"""

from __future__ import annotations

import argparse

import kserve
from kserve import logging as kserve_logging

from sklearnserver_equiv.model import SKLearnModel

parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
parser.add_argument("--model_dir", required=True, help="A local path to the model directory")
args, _ = parser.parse_known_args()


def main() -> None:
    if args.configure_logging:
        kserve_logging.configure_logging(args.log_config_file)
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
