# Writing and reading data frames. With the 'arrow' package, parquet files are written
# and read here, in R; without it (Debian has no arrow package) the Python client does
# the parquet work through 'reticulate', on the same catalog API.

.dy_has_arrow <- function() requireNamespace("arrow", quietly = TRUE)

.dy_python_client <- function(config) {
  if (!requireNamespace("reticulate", quietly = TRUE)) {
    .dy_stop("Reading and writing data needs the 'arrow' package, or 'reticulate' with the Python package dockyard_data[parquet].",
             "dockyard_not_configured")
  }
  dd <- reticulate::import("dockyard_data", convert = FALSE)
  cfg <- dd$ClientConfig(url = config$url, token = config$token,
                         run_id = config$run_id, data_root = config$data_root,
                         s3_endpoint_url = config$s3_endpoint_url)
  dd$Client(config = cfg)
}

# Python exceptions from the client carry the same API errors; give them R classes.
.dy_python <- function(expr) {
  tryCatch(expr, error = function(e) {
    message <- conditionMessage(e)
    classes <- c(
      TableNotFound = "dockyard_table_not_found",
      PartitionNotFound = "dockyard_partition_not_found",
      BatchNotFound = "dockyard_batch_not_found",
      RunNotFound = "dockyard_run_not_found",
      PermissionDenied = "dockyard_permission_denied",
      SchemaMismatch = "dockyard_schema_mismatch",
      BatchIncomplete = "dockyard_batch_incomplete",
      NothingToRollBack = "dockyard_nothing_to_roll_back",
      AuthenticationFailed = "dockyard_authentication_failed",
      InvalidRequest = "dockyard_invalid_request",
      ServiceUnavailable = "dockyard_service_unavailable"
    )
    last <- tryCatch(reticulate::py_last_error(), error = function(x) NULL)
    name <- if (!is.null(last)) last$type else ""
    class <- if (name %in% names(classes)) classes[[name]] else "dockyard_error_python"
    text <- if (!is.null(last) && nzchar(last$value %||% "")) last$value else message
    .dy_stop(text, class)
  })
}

.dy_local_path <- function(location, storage, config) {
  root <- sub("/+$", "", storage$root %||% "")
  if (nzchar(config$data_root) && nzchar(root) && config$data_root != root &&
      (location == root || startsWith(location, paste0(root, "/")))) {
    return(paste0(config$data_root, substring(location, nchar(root) + 1)))
  }
  location
}

.dy_arrow_fs <- function(location, storage, config) {
  if (startsWith(location, "s3://")) {
    endpoint <- if (nzchar(config$s3_endpoint_url)) config$s3_endpoint_url else storage$endpoint_url %||% ""
    args <- list()
    if (nzchar(endpoint)) args$endpoint_override <- endpoint
    if (nzchar(storage$region %||% "")) args$region <- storage$region
    fs <- do.call(arrow::S3FileSystem$create, args)
    return(list(fs = fs, path = substring(location, 6)))
  }
  path <- .dy_local_path(location, storage, config)
  list(fs = arrow::LocalFileSystem$create(), path = path)
}

#' Store a data frame as a new batch of a partition and make it the current one.
#'
#' @param data a data.frame
#' @param namespace,resource the table: namespace and name
#' @param partitions the partition, a named list such as list(date = "20161031"); NULL
#'   for an unpartitioned table
#' @param evolve allow new nullable columns
#' @return the committed batch, as a list, invisibly (a write is done for its effect;
#'   keep the result to see batch_id and previous_batch_id)
dy_writer <- function(data, namespace, resource, partitions = NULL, evolve = FALSE,
                      config = dy_config()) {
  if (!is.data.frame(data)) {
    .dy_stop("dy_writer() takes a data.frame", "dockyard_invalid_request")
  }
  partition <- .dy_partition(partitions)
  if (!.dy_has_arrow()) {
    client <- .dy_python_client(config)
    helper <- reticulate::import("dockyard_data.rsupport", convert = FALSE)
    frame <- helper$frame_from_r(.dy_frame_to_python(data))
    batch <- .dy_python(client$store_dataframe(frame, namespace, resource,
                                               partition = reticulate::dict(partition),
                                               evolve = evolve))
    return(invisible(reticulate::py_to_r(batch)))
  }
  for (key in names(partition)) {
    if (key %in% names(data)) {
      if (nrow(data) > 0 && !all(as.character(data[[key]]) == partition[[key]])) {
        .dy_stop(paste0("Column '", key, "' holds values other than the partition value '",
                        partition[[key]], "'"), "dockyard_invalid_request")
      }
    } else {
      data[[key]] <- rep(partition[[key]], nrow(data))
    }
  }
  began <- .dy_call(config, "POST", .dy_path(namespace, resource, "batches"),
                    list(partition = partition, evolve = evolve, run_id = config$run_id))
  target <- .dy_arrow_fs(began$location, began$storage, config)
  target$fs$CreateDir(target$path)
  file <- "part-00000.parquet"
  arrow::write_parquet(arrow::Table$create(data), target$fs$path(paste0(target$path, "/", file)))
  size <- target$fs$GetFileInfo(paste0(target$path, "/", file))[[1]]$size
  manifest <- list(format = "dockyard-batch/1", batch_id = began$batch_id,
                   partition = began$partition_values,
                   files = list(list(path = file, rows = nrow(data), bytes = size)),
                   rows = nrow(data))
  stream <- target$fs$OpenOutputStream(paste0(target$path, "/_dockyard_manifest.json"))
  stream$write(charToRaw(as.character(jsonlite::toJSON(manifest, auto_unbox = TRUE))))
  stream$close()
  result <- .dy_call(config, "POST",
                     .dy_path(namespace, resource, "batches", began$batch_id, "commit"),
                     list(evolve = evolve))
  batch <- result$batch
  batch$previous_batch_id <- result$previous_batch_id
  invisible(batch)
}

#' Load committed data as a data.frame.
#'
#' @param partitions NULL (all), one partition as a named list, or a list of them; a
#'   partial partition selects every matching one
#' @param batch_id read exactly this batch
#' @param as_of read the state at this time (POSIXct or ISO 8601 text)
#' @param columns only these columns
dy_reader <- function(namespace, resource, partitions = NULL, batch_id = NULL, as_of = NULL,
                      columns = NULL, config = dy_config()) {
  if (inherits(as_of, "POSIXt")) {
    as_of <- format(as.POSIXct(as_of), "%Y-%m-%dT%H:%M:%OS6Z", tz = "UTC")
  }
  if (!.dy_has_arrow()) {
    client <- .dy_python_client(config)
    plist <- .dy_partition_list(partitions)
    frame <- .dy_python(client$load_dataframe(
      namespace, resource,
      partitions = if (is.null(plist)) NULL else lapply(plist, reticulate::dict),
      batch_id = batch_id, as_of = as_of,
      columns = if (is.null(columns)) NULL else as.list(columns)))
    helper <- reticulate::import("dockyard_data.rsupport", convert = FALSE)
    return(.dy_frame_from_python(reticulate::py_to_r(helper$frame_for_r(frame))))
  }
  body <- list(partitions = .dy_partition_list(partitions), batch_id = batch_id,
               as_of = as_of, run_id = config$run_id)
  body <- body[!vapply(body, is.null, logical(1))]
  plan <- .dy_call(config, "POST", .dy_path(namespace, resource, "reads"), .dy_object(body))
  frames <- list()
  for (batch in plan$batches) {
    source <- .dy_arrow_fs(batch$location, plan$storage, config)
    for (file in batch$files) {
      wanted <- if (is.null(columns)) NULL else intersect(columns, unlist(batch$columns))
      frame <- as.data.frame(arrow::read_parquet(
        source$fs$path(paste0(source$path, "/", file)),
        col_select = if (is.null(wanted)) NULL else wanted))
      frames[[length(frames) + 1]] <- frame
    }
  }
  .dy_bind(frames, columns)
}

# A data.frame as plain lists for dockyard_data.rsupport.frame_from_r(): reticulate's own
# conversion turns one-row frames into scalars and depends on the numpy version.
.dy_frame_to_python <- function(data) {
  columns <- lapply(names(data), function(name) {
    v <- data[[name]]
    na <- is.na(v)
    if (is.factor(v)) v <- as.character(v)
    if (inherits(v, "POSIXt")) {
      kind <- "datetime"; v <- as.double(as.POSIXct(v))
    } else if (inherits(v, "Date")) {
      kind <- "date"; v <- as.double(v)
    } else if (is.logical(v)) {
      kind <- "logical"
    } else if (is.integer(v)) {
      kind <- "integer"
    } else if (is.numeric(v)) {
      kind <- "double"
    } else {
      kind <- "character"; v <- as.character(v)
    }
    v[na] <- switch(kind, logical = FALSE, integer = 0L, character = "", 0)
    list(kind = kind, values = as.list(unname(v)), na = as.list(unname(na)))
  })
  list(names = as.list(names(data)), columns = columns)
}

# A data.frame from dockyard_data.rsupport.frame_for_r(): one vector per column plus
# a mask of missing values.
.dy_frame_from_python <- function(spec) {
  as_r <- function(x) if (inherits(x, "python.builtin.object")) reticulate::py_to_r(x) else x
  columns <- lapply(as_r(spec$columns), function(column) {
    column <- as_r(column)
    values <- as_r(column$values)
    values <- switch(column$kind,
      character = as.character(values),
      integer = as.integer(values),
      double = as.double(values),
      logical = as.logical(values),
      datetime = as.POSIXct(as.double(values), origin = "1970-01-01", tz = "UTC"),
      values)
    na <- as.logical(as_r(column$na))
    if (length(na) && any(na)) values[na] <- NA
    values
  })
  names(columns) <- unlist(as_r(spec$names))
  as.data.frame(columns, stringsAsFactors = FALSE, check.names = FALSE)
}

# rbind that fills columns a batch lacks (written before a schema evolution) with NA.
.dy_bind <- function(frames, columns = NULL) {
  if (length(frames) == 0) return(data.frame())
  all_columns <- columns %||% unique(unlist(lapply(frames, names)))
  filled <- lapply(frames, function(f) {
    for (col in setdiff(all_columns, names(f))) f[[col]] <- rep(NA, nrow(f))
    f[, all_columns, drop = FALSE]
  })
  out <- do.call(rbind, filled)
  rownames(out) <- NULL
  out
}

#' Commits and rollbacks of a table (or one partition), oldest first, as a data.frame.
dy_history <- function(namespace, resource, partition = NULL, limit = 1000,
                       config = dy_config()) {
  query <- list(limit = limit)
  if (!is.null(partition)) {
    p <- .dy_partition(partition)
    query$partition <- paste(paste0(names(p), "=", unlist(p)), collapse = "/")
  }
  .dy_records(.dy_call(config, "GET", .dy_path(namespace, resource, "history"),
                       query = query)$history)
}

#' Point a partition back at an earlier batch: to_batch, or by default the batch
#' committed before the current one. Nothing is deleted. Returns the pointer change
#' (action, batch_id, previous batch) invisibly.
dy_rollback <- function(namespace, resource, partition = NULL, to_batch = NULL,
                        config = dy_config()) {
  body <- list(partition = .dy_partition(partition))
  if (!is.null(to_batch)) body$to_batch <- to_batch
  invisible(.dy_call(config, "POST", .dy_path(namespace, resource, "rollback"), body))
}

#' Tables of the catalog (optionally of one namespace), as a data.frame.
dy_tables <- function(namespace = NULL, config = dy_config()) {
  query <- if (is.null(namespace)) NULL else list(namespace = namespace)
  tables <- .dy_call(config, "GET", "/tables", query = query)$tables
  for (i in seq_along(tables)) {
    tables[[i]]$partition_keys <- paste(unlist(tables[[i]]$partition_keys), collapse = ",")
    tables[[i]]$schema <- NULL
  }
  .dy_records(tables)
}

#' Committed partitions of a table and their current batches, as a data.frame.
dy_partitions <- function(namespace, resource, config = dy_config()) {
  parts <- .dy_call(config, "GET", .dy_path(namespace, resource, "partitions"))$partitions
  .dy_records(lapply(parts, function(p) {
    list(partition = p$partition, batch_id = p$batch$batch_id, rows = p$batch$rows,
         bytes = p$batch$bytes, committed_at = p$batch$committed_at,
         created_by = p$batch$created_by, run_id = p$batch$run_id, version = p$version)
  }))
}
