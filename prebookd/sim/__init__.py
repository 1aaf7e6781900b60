"""The AimHarder simulator (`prebookd simulate`): an aiohttp server (`server`) that
answers as AimHarder does (`account`, with its old login's `pages`; `box`), with the
member and class model (`model`, `state`), operator controls (`control`), the setup
file's shape (`config`), injectable faults (`faults`), each box's own clock and
distance (`network`), and the load balancer in front of it all that watches each
client connection (`connection`).

Stands apart: imports nothing of prebookd but the shared ground, so that it tests
prebookd's client from outside, over real HTTP.
"""
