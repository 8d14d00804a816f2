from xchannel.cli import main

raise SystemExit(main())
