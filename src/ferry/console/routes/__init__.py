"""Console page modules; each exports `router` (paths relative to /console) and is listed in console.app.ROUTERS."""
