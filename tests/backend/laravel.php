<?php
// A stand-in for a Laravel app, for the connect and subscribe proxy tests: sessions in a
// cookie, CSRF checked as Laravel's VerifyCsrfToken does it (the X-XSRF-TOKEN header must
// match the XSRF-TOKEN cookie), `/broadcasting/auth` answering in the Pusher format signed
// with hash_hmac like Illuminate\Broadcasting\Broadcasters\PusherBroadcaster, and channel
// rules like a routes/channels.php.
//
//   php -S 127.0.0.1:PORT tests/backend/laravel.php
//
// Environment: APP_KEY and APP_SECRET (the Herald app's), LOG_FILE (each request's path,
// Cookie and X-XSRF-TOKEN headers are appended to it, one JSON line each), STATE_DIR (for
// the concurrency count).

$key = getenv('APP_KEY') ?: 'app-key';
$secret = getenv('APP_SECRET') ?: 'app-secret-1234';
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
parse_str(parse_url($_SERVER['REQUEST_URI'], PHP_URL_QUERY) ?? '', $query);

// The "database": sessions and users.
$sessions = ['sess-ann' => '1', 'sess-bob' => '2'];
$users = ['1' => ['name' => 'Ann'], '2' => ['name' => 'Bob']];

function answer(int $status, $body): void {
    http_response_code($status);
    header('Content-Type: application/json');
    echo is_string($body) ? $body : json_encode($body);
    exit;
}

// What the backend saw, for the test to check what was (not) forwarded.
if ($log = getenv('LOG_FILE')) {
    file_put_contents($log, json_encode([
        'path' => $path,
        'cookie' => $_SERVER['HTTP_COOKIE'] ?? null,
        'xsrf' => $_SERVER['HTTP_X_XSRF_TOKEN'] ?? null,
        'user_agent' => $_SERVER['HTTP_USER_AGENT'] ?? null,
        'body' => file_get_contents('php://input'),
    ]) . "\n", FILE_APPEND | LOCK_EX);
}

// How many requests are being answered at once, and the most ever (under a lock).
function concurrency(int $delta): void {
    $dir = getenv('STATE_DIR') ?: sys_get_temp_dir();
    $f = fopen("$dir/concurrency", 'c+');
    flock($f, LOCK_EX);
    $state = json_decode(stream_get_contents($f) ?: '{"now":0,"max":0}', true);
    $state['now'] += $delta;
    $state['max'] = max($state['max'], $state['now']);
    ftruncate($f, 0);
    rewind($f);
    fwrite($f, json_encode($state));
    flock($f, LOCK_UN);
    fclose($f);
}

$session = $_COOKIE['laravel_session'] ?? null;
$user = $session !== null ? ($sessions[$session] ?? null) : null;

switch ($path) {
    // The connect proxy: who is this connection?
    case '/herald/connect':
        switch ($query['mode'] ?? 'normal') {
            case 'slow':
                concurrency(1);
                usleep((int) ($query['ms'] ?? 200) * 1000);
                concurrency(-1);
                break;
            case 'hang':
                sleep(10);
                break;
            case 'error':
                answer(500, '<html>Server Error</html>');
            case 'malformed':
                answer(200, '{"user_id": ');
        }
        if ($user === null) {
            answer(403, ['error' => ['code' => 200, 'message' => 'not signed in']]);
        }
        answer(200, [
            'user_id' => $user,
            'channels' => ["private-user.$user"],
            'roles' => $user === '1' ? ['admin'] : [],
            'info' => $users[$user],
        ]);

    // Laravel's broadcasting auth, with routes/channels.php's rules:
    //   Broadcast::channel('orders.{id}', fn ($user, $id) => (int) $user->id === (int) $id);
    //   Broadcast::channel('room', fn ($user) => ['id' => $user->id, 'name' => $user->name]);
    case '/broadcasting/auth':
        if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
            answer(405, ['message' => 'method not allowed']);
        }
        $cookieToken = isset($_COOKIE['XSRF-TOKEN']) ? $_COOKIE['XSRF-TOKEN'] : null;
        $headerToken = $_SERVER['HTTP_X_XSRF_TOKEN'] ?? null;
        if ($cookieToken === null || $headerToken === null || !hash_equals($cookieToken, $headerToken)) {
            answer(419, ['message' => 'CSRF token mismatch.']);
        }
        if ($user === null) {
            answer(403, ['message' => 'Unauthenticated.']);
        }
        $socketId = $_POST['socket_id'] ?? '';
        $channel = $_POST['channel_name'] ?? '';
        if (preg_match('/^private-orders\.(\d+)$/', $channel, $m)) {
            if ($m[1] !== $user) {
                answer(403, ['message' => 'This action is unauthorized.']);
            }
            $signature = hash_hmac('sha256', "$socketId:$channel", $secret);
            answer(200, ['auth' => "$key:$signature"]);
        }
        if ($channel === 'presence-room') {
            $data = json_encode(['user_id' => $user, 'user_info' => $users[$user]]);
            $signature = hash_hmac('sha256', "$socketId:$channel:$data", $secret);
            answer(200, ['auth' => "$key:$signature", 'channel_data' => $data]);
        }
        if ($channel === 'private-forged') {
            // Signed with the wrong secret: Herald must not accept it.
            $signature = hash_hmac('sha256', "$socketId:$channel", 'not-the-secret');
            answer(200, ['auth' => "$key:$signature"]);
        }
        answer(403, ['message' => 'This action is unauthorized.']);

    default:
        answer(404, ['message' => 'not found']);
}
