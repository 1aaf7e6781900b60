"""The AimHarder simulator (`prebookd simulate`): an aiohttp server (`server`) that
answers as AimHarder does (`account`, `box`), with the member and class model (`model`,
`state`), operator controls (`control`) and injectable faults (`faults`).

Stands apart: imports nothing of prebookd but the shared ground, so that it tests
prebookd's client from outside, over real HTTP.
"""
