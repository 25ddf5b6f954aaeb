"""Finished runs read back: their results gathered next to the published numbers (`runs`), charted (`plot`), and
written into the recipe tables of `recipes/README.md` (`recipes_index`). Commands: `hfkd report`,
`hfkd recipes-index`."""
