from prebookd.cli import main

raise SystemExit(main())
