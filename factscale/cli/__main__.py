from factscale.cli.main import main

main()
