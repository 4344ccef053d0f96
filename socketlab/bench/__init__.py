"""``socketlab bench``: load generators and measurements.

- :mod:`socketlab.bench.tally` -- sans-IO: tagged messages and what receivers saw;
- :mod:`socketlab.bench.chat` -- chat relay scenarios (fanout, slow, connections);
- :mod:`socketlab.bench.transfer` -- bulk TCP and UDP through socketlab's commands and peers.

Everything runs on loopback and is bounded in count and time.
"""
