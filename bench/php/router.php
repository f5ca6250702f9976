<?php
// The PHP peer of the benchmark: PHP's built-in server with its file session handler.
// The same routes as the others: /setsession/, /getsession/, /incr/NAME.
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
session_start();
if ($path === '/setsession/') {
    $_SESSION['sname'] = 'abc';
    $_SESSION['semail'] = 'abc@gmail.com';
    echo 'session is set';
} elseif ($path === '/getsession/') {
    if (isset($_SESSION['sname'], $_SESSION['semail'])) {
        echo $_SESSION['sname'] . ' ' . $_SESSION['semail'];
    } else {
        http_response_code(404);
        echo 'visit /setsession/ first';
    }
} elseif (preg_match('#^/incr/(\w+)$#', $path, $m)) {
    $_SESSION[$m[1]] = ($_SESSION[$m[1]] ?? 0) + 1;
    header('Content-Type: application/json');
    echo json_encode(['data' => $_SESSION]);
} else {
    http_response_code(404);
    echo 'not found';
}
