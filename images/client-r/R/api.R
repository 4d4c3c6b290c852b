# The catalog API over HTTP: configuration from the environment, JSON in and out, and
# API errors turned into R conditions of class "dockyard_error" (plus a specific class
# such as "dockyard_table_not_found"), so that tryCatch() can tell them apart.

.dy_error_classes <- c(
  "Table not found" = "dockyard_table_not_found",
  "Partition not found" = "dockyard_partition_not_found",
  "Batch not found" = "dockyard_batch_not_found",
  "Run not found" = "dockyard_run_not_found",
  "Permission denied" = "dockyard_permission_denied",
  "Schema mismatch" = "dockyard_schema_mismatch",
  "Batch incomplete" = "dockyard_batch_incomplete",
  "Nothing to roll back" = "dockyard_nothing_to_roll_back"
)

#' Where Dockyard is. Inside Dockyard notebooks and jobs everything comes from the
#' environment; elsewhere set DOCKYARD_URL and DOCKYARD_TOKEN or pass url and token.
dy_config <- function(url = NULL, token = NULL) {
  env <- function(name) {
    value <- Sys.getenv(name, "")
    if (nzchar(value)) value else NULL
  }
  url <- url %||% env("DOCKYARD_URL")
  token <- token %||% env("DOCKYARD_TOKEN") %||% env("JUPYTERHUB_API_TOKEN")
  if (is.null(url)) {
    .dy_stop("Dockyard's address is not set: set DOCKYARD_URL (e.g. https://dockyard.example.com/services/dockyard/) and DOCKYARD_TOKEN. Inside Dockyard notebooks and jobs both are set.",
             "dockyard_not_configured")
  }
  if (is.null(token)) {
    .dy_stop("No token: set DOCKYARD_TOKEN to a JupyterHub API token.", "dockyard_not_configured")
  }
  run <- env("DOCKYARD_RUN_ID")
  list(
    url = sub("/+$", "", url),
    token = token,
    run_id = if (!is.null(run) && grepl("^[0-9]+$", run)) as.integer(run) else NULL,
    data_root = sub("/+$", "", env("DOCKYARD_DATA_ROOT") %||% ""),
    s3_endpoint_url = env("DOCKYARD_S3_ENDPOINT_URL") %||% env("AWS_ENDPOINT_URL_S3") %||% ""
  )
}

`%||%` <- function(a, b) if (is.null(a)) b else a

.dy_stop <- function(message, class, status = NA_integer_, detail = NULL) {
  stop(structure(
    class = c(class, "dockyard_error", "error", "condition"),
    list(message = message, call = NULL, status = status, detail = detail)
  ))
}

.dy_message <- function(error, detail) {
  if (is.character(detail) && length(detail) == 1 && nzchar(detail)) return(detail)
  if (is.list(detail) && !is.null(detail$message)) return(detail$message)
  if (is.list(detail) && length(detail) > 0) {
    parts <- vapply(detail, function(d) {
      if (is.list(d)) paste0(d$field %||% "?", ": ", d$message %||% "") else as.character(d)
    }, character(1))
    return(paste0(error, ": ", paste(parts, collapse = "; ")))
  }
  if (nzchar(error)) error else "Dockyard refused the request"
}

.dy_path <- function(namespace, table, ...) {
  parts <- c(namespace, table, ...)
  paste0("/tables/", paste(vapply(parts, utils::URLencode, character(1), reserved = TRUE),
                           collapse = "/"))
}

# An empty named list, so that jsonlite writes {} (not []).
.dy_object <- function(x = NULL) {
  if (is.null(x) || length(x) == 0) return(structure(list(), names = character(0)))
  x
}

# Partition values as the strings they are in paths (no scientific notation).
.dy_partition <- function(p) {
  if (is.null(p) || length(p) == 0) return(.dy_object())
  if (is.null(names(p)) || any(!nzchar(names(p)))) {
    .dy_stop("A partition is a named list, e.g. list(date = \"20161031\")", "dockyard_invalid_request")
  }
  values <- lapply(as.list(p), function(v) {
    if (is.numeric(v)) format(v, scientific = FALSE, trim = TRUE) else as.character(v)
  })
  .dy_object(values)
}

# partitions = list(date = "1") is one partition; list(list(date = "1"), list(date = "2"))
# several.
.dy_partition_list <- function(partitions) {
  if (is.null(partitions)) return(NULL)
  if (!is.null(names(partitions))) return(list(.dy_partition(partitions)))
  lapply(partitions, .dy_partition)
}

.dy_call <- function(config, method, path, body = NULL, query = NULL) {
  url <- paste0(config$url, "/api/v1", path)
  args <- list(
    verb = method, url = url,
    httr::add_headers(Authorization = paste("token", config$token),
                      `User-Agent` = "dockyard-r"),
    httr::timeout(120),
    query = query
  )
  if (!is.null(body)) {
    args$body <- jsonlite::toJSON(body, auto_unbox = TRUE, null = "null", digits = NA)
    args <- c(args, list(httr::content_type_json()))
  }
  response <- tryCatch(do.call(httr::VERB, args), error = function(e) {
    .dy_stop(paste0("Cannot reach Dockyard at ", config$url, ": ", conditionMessage(e)),
             "dockyard_service_unavailable")
  })
  status <- httr::status_code(response)
  text <- httr::content(response, as = "text", encoding = "UTF-8")
  parsed <- tryCatch(jsonlite::fromJSON(text, simplifyVector = FALSE), error = function(e) NULL)
  if (status >= 400) {
    error <- if (is.list(parsed)) parsed$error %||% "" else ""
    detail <- if (is.list(parsed)) parsed$detail else NULL
    class <- if (error %in% names(.dy_error_classes)) .dy_error_classes[[error]] else
      if (status == 401) "dockyard_authentication_failed" else
      if (status == 403) "dockyard_permission_denied" else
      if (status >= 500) "dockyard_service_unavailable" else "dockyard_invalid_request"
    if (is.null(parsed)) {
      detail <- paste0("Dockyard answered ", status, " for ", method, " ", url,
                       "; is DOCKYARD_URL the Dockyard service address (.../services/dockyard/)?")
    }
    .dy_stop(.dy_message(error, detail), class, status, detail)
  }
  if (is.null(parsed) && nzchar(text)) {
    .dy_stop(paste0("Dockyard answered ", method, " ", url, " with something that is not JSON"),
             "dockyard_service_unavailable")
  }
  parsed
}

# A list of records (from JSON) as a data.frame; NULLs become NA.
.dy_records <- function(records) {
  if (length(records) == 0) return(data.frame())
  columns <- unique(unlist(lapply(records, names)))
  scalar <- function(v) if (is.null(v) || length(v) != 1 || is.list(v)) NA else v
  out <- lapply(columns, function(col) {
    values <- lapply(records, function(r) scalar(r[[col]]))
    unlist(values)
  })
  names(out) <- columns
  as.data.frame(out, stringsAsFactors = FALSE)
}
