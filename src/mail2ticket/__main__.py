from mail2ticket.cli.main import main; import sys; sys.exit(main())
