from stafet.cli.commands import main

main()
