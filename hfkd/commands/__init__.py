"""What only the command line uses: the `hfkd` command and its subcommands (`distill`, `cache`, `convert`, `report`,
`recipes-index`), their argument groups and parser (`--config` recipes), the run folder policy, the data steps of a
script run and smoke mode. The library (training, teachers, losses, data, models) never imports this package."""
