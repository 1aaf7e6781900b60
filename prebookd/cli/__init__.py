"""The command line: `main` parses arguments and dispatches; one module per command
group (`prebookings`: add/list/cancel, `box`, `account`, `status`, `simulate`), with the
input checks and output they share in `common`.

The top layer: may import everything below it (`daemon`, `aimharder`, `db`, `sim`,
`demo` and the shared ground); nothing imports it but `prebookd.__main__`.
"""
