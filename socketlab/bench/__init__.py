"""``socketlab bench``: load generators and measurements.

- :mod:`socketlab.bench.tally` -- sans-IO: tagged messages and what receivers saw;
- :mod:`socketlab.bench.chat` -- chat relay scenarios (fanout, slow, connections): the names, gathered
  from :mod:`~socketlab.bench.fanout`, :mod:`~socketlab.bench.receivers`,
  :mod:`~socketlab.bench.connections` and :mod:`~socketlab.bench.common`;
- :mod:`socketlab.bench.pairs` -- the rooms workloads (pairs, mixed): thousands of members in many
  rooms, planned by :mod:`~socketlab.bench.rooms` (sans-IO), driven by the load processes of
  :mod:`~socketlab.bench.load`, each member speaking through a sans-IO speaker
  (:mod:`~socketlab.bench.speakers`);
- :mod:`socketlab.bench.transfer` -- bulk TCP and UDP through socketlab's commands and peers.

Everything runs on loopback and is bounded in count and time.
"""
